/**
 * The few client-server API calls the appservice makes as itself (Matrix client-server API and
 * application service API, v1.7+), with errors that say what an admin should check.
 */
export class HomeserverError extends Error {
  constructor(
    message: string,
    readonly status: number | undefined,
    readonly errcode: string | undefined,
  ) {
    super(message);
    this.name = "HomeserverError";
  }
}

/** Application service API §Identity assertion: act as a user of our namespace. */
const withUser = (path: string, userId: string | undefined) =>
  userId === undefined ? path : `${path}?user_id=${encodeURIComponent(userId)}`;

export interface HomeserverClientOptions {
  /** The client-server API base URL, without a trailing slash. */
  url: string;
  asToken: string;
  timeoutMs?: number;
}

export class HomeserverClient {
  constructor(private readonly options: HomeserverClientOptions) {}

  /** `GET /_matrix/client/versions`: the spec versions the homeserver speaks. */
  async versions(): Promise<string[]> {
    const body = await this.request("GET", "/_matrix/client/versions", undefined, false);
    const versions = (body as { versions?: unknown }).versions;
    if (!Array.isArray(versions)) {
      throw new HomeserverError(
        `${this.options.url} answered /versions without a versions list: is it a Matrix homeserver?`,
        200,
        undefined,
      );
    }
    return versions.filter((v): v is string => typeof v === "string");
  }

  /** `GET /account/whoami` with the as_token: the bot's user ID. */
  async whoami(): Promise<string> {
    const body = await this.request("GET", "/_matrix/client/v3/account/whoami");
    const userId = (body as { user_id?: unknown }).user_id;
    if (typeof userId !== "string") throw new HomeserverError("whoami answered no user_id", 200, undefined);
    return userId;
  }

  /**
   * `POST /_matrix/client/v1/appservice/{id}/ping` (spec v1.7): the homeserver pings the
   * appservice back, and retries at once the transactions it had queued for it.
   */
  async ping(appserviceId: string, transactionId: string): Promise<{ durationMs: number }> {
    const body = await this.request(
      "POST",
      `/_matrix/client/v1/appservice/${encodeURIComponent(appserviceId)}/ping`,
      { transaction_id: transactionId },
    );
    return { durationMs: Number((body as { duration_ms?: unknown }).duration_ms ?? 0) };
  }

  /** The bot, or `asUser` (a user of our namespace), joins a room; joining twice is harmless. */
  async joinRoom(roomId: string, asUser?: string): Promise<void> {
    await this.request("POST", withUser(`/_matrix/client/v3/join/${encodeURIComponent(roomId)}`, asUser), {});
  }

  /** A state event's content as the bot sees it, or undefined when the room has none. */
  async stateContent(
    roomId: string,
    type: string,
    stateKey = "",
  ): Promise<Record<string, unknown> | undefined> {
    try {
      return (await this.request(
        "GET",
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/${encodeURIComponent(type)}/${encodeURIComponent(stateKey)}`,
      )) as Record<string, unknown>;
    } catch (err) {
      if (err instanceof HomeserverError && err.errcode === "M_NOT_FOUND") return undefined;
      throw err;
    }
  }

  /** The bot creates a room (`POST /createRoom`); answers its room ID. */
  async createRoom(body: Record<string, unknown>): Promise<string> {
    const answer = await this.request("POST", "/_matrix/client/v3/createRoom", body);
    const roomId = (answer as { room_id?: unknown }).room_id;
    if (typeof roomId !== "string")
      throw new HomeserverError("createRoom answered no room_id", 200, undefined);
    return roomId;
  }

  /** `asUser` (a user of our namespace) leaves a room. */
  async leaveRoom(roomId: string, asUser: string): Promise<void> {
    await this.request(
      "POST",
      withUser(`/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/leave`, asUser),
      {},
    );
  }

  /** The bot (or `asUser`) invites `userId` into a room. */
  async invite(roomId: string, userId: string, asUser?: string): Promise<void> {
    await this.request(
      "POST",
      withUser(`/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/invite`, asUser),
      { user_id: userId },
    );
  }

  /** Registers a user of our exclusive namespace (a ghost); one that exists already is fine. */
  async registerGhost(localpart: string): Promise<void> {
    try {
      await this.request("POST", "/_matrix/client/v3/register", {
        type: "m.login.application_service",
        username: localpart,
        inhibit_login: true,
      });
    } catch (err) {
      if (err instanceof HomeserverError && err.errcode === "M_USER_IN_USE") return;
      throw err;
    }
  }

  /** A user's display name (`GET /profile/{userId}/displayname`); undefined when they have none. */
  async displayName(userId: string): Promise<string | undefined> {
    try {
      const body = await this.request(
        "GET",
        `/_matrix/client/v3/profile/${encodeURIComponent(userId)}/displayname`,
      );
      const name = (body as { displayname?: unknown }).displayname;
      return typeof name === "string" && name !== "" ? name : undefined;
    } catch (err) {
      if (err instanceof HomeserverError && err.status === 404) return undefined;
      throw err;
    }
  }

  async setDisplayName(userId: string, displayName: string): Promise<void> {
    await this.request(
      "PUT",
      withUser(`/_matrix/client/v3/profile/${encodeURIComponent(userId)}/displayname`, userId),
      { displayname: displayName },
    );
  }

  /**
   * Sends an event as the bot, under a transaction ID derived from what caused it: the
   * homeserver makes one event per (sender, txnId), so a retry after a crash posts nothing twice.
   */
  async sendEvent(
    roomId: string,
    type: string,
    content: Record<string, unknown>,
    txnId: string,
    asUser?: string,
  ): Promise<string> {
    const body = await this.request(
      "PUT",
      withUser(
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/send/${encodeURIComponent(type)}/${encodeURIComponent(txnId)}`,
        asUser,
      ),
      content,
    );
    return String((body as { event_id?: unknown }).event_id ?? "");
  }

  /** `asUser` (or the bot) redacts an event; `txnId` makes a repeat harmless. */
  async redact(
    roomId: string,
    eventId: string,
    txnId: string,
    reason?: string,
    asUser?: string,
  ): Promise<void> {
    await this.request(
      "PUT",
      withUser(
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/redact/${encodeURIComponent(eventId)}/${encodeURIComponent(txnId)}`,
        asUser,
      ),
      reason === undefined ? {} : { reason },
    );
  }

  /** The bot (or `asUser`) kicks, bans or unbans a user. */
  async moderate(
    action: "kick" | "ban" | "unban",
    roomId: string,
    userId: string,
    reason?: string,
    asUser?: string,
  ): Promise<void> {
    await this.request(
      "POST",
      withUser(`/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/${action}`, asUser),
      { user_id: userId, ...(reason === undefined ? {} : { reason }) },
    );
  }

  /** The rooms the bot is joined to (`GET /joined_rooms`). */
  async joinedRooms(): Promise<string[]> {
    const body = await this.request("GET", "/_matrix/client/v3/joined_rooms");
    const rooms = (body as { joined_rooms?: unknown }).joined_rooms;
    return Array.isArray(rooms) ? rooms.filter((r): r is string => typeof r === "string") : [];
  }

  /** The users joined to a room, as the bot sees it (`GET /rooms/{roomId}/joined_members`). */
  async joinedMembers(roomId: string): Promise<string[]> {
    const body = await this.request(
      "GET",
      `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/joined_members`,
    );
    const joined = (body as { joined?: unknown }).joined;
    return typeof joined === "object" && joined !== null ? Object.keys(joined) : [];
  }

  /** The bot points a room alias of our namespace at a room (`PUT /directory/room/{alias}`). */
  async setAlias(alias: string, roomId: string): Promise<void> {
    try {
      await this.request("PUT", `/_matrix/client/v3/directory/room/${encodeURIComponent(alias)}`, {
        room_id: roomId,
      });
    } catch (err) {
      // It exists already (an earlier query made it): fine.
      if (!(err instanceof HomeserverError && err.status === 409)) throw err;
    }
  }

  /** The bot (or `asUser`) sets a state event. */
  async setState(
    roomId: string,
    type: string,
    stateKey: string,
    content: Record<string, unknown>,
    asUser?: string,
  ): Promise<string> {
    const body = await this.request(
      "PUT",
      withUser(
        `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state/${encodeURIComponent(type)}/${encodeURIComponent(stateKey)}`,
        asUser,
      ),
      content,
    );
    return String((body as { event_id?: unknown }).event_id ?? "");
  }

  private async request(
    method: string,
    path: string,
    body?: unknown,
    authenticated = true,
  ): Promise<unknown> {
    const headers: Record<string, string> = {};
    if (authenticated) headers.authorization = `Bearer ${this.options.asToken}`;
    if (body !== undefined) headers["content-type"] = "application/json";
    let response: Response;
    try {
      response = await fetch(`${this.options.url}${path}`, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 30_000),
      });
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message;
      throw new HomeserverError(
        `cannot reach the homeserver at ${this.options.url} (${cause}): check homeserver.url and that it is running`,
        undefined,
        undefined,
      );
    }
    const text = await response.text();
    let parsed: unknown = undefined;
    try {
      parsed = text === "" ? {} : JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    if (!response.ok) {
      const error = (parsed ?? {}) as { errcode?: unknown; error?: unknown };
      const errcode = typeof error.errcode === "string" ? error.errcode : undefined;
      const reason = typeof error.error === "string" ? error.error : text.slice(0, 200);
      throw new HomeserverError(
        `${method} ${path}: ${response.status} ${errcode ?? ""} ${reason}`.replace(/\s+/g, " ").trim(),
        response.status,
        errcode,
      );
    }
    if (parsed === undefined) {
      throw new HomeserverError(`${method} ${path}: the answer is not JSON`, response.status, undefined);
    }
    return parsed;
  }
}
