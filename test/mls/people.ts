/** The users of the MLS tests, one per provider, and roles that let alice kick and ban them. */
export const ALICE = "@alice:a.example";
export const BOB = "@bob:b.example";
export const CAROL = "@carol:c.example";

export const ROLES = {
  roles: {
    admin: {
      order: 100,
      permissions: { add: true, kick: true, ban: true, roles: ["admin", "member"] },
      assignees: [ALICE],
    },
    member: { order: 10, permissions: { add: true }, assignees: [BOB, CAROL] },
  },
};
