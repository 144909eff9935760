/**
 * Array-based tree arithmetic (RFC 9420 Appendix C): leaves at even node indices (leaf L at 2L),
 * parents at odd ones; a tree of 2^d leaves has 2^(d+1) - 1 nodes and its root at 2^d - 1.
 */

/** The level of a node: 0 for a leaf, the number of trailing one bits otherwise. */
export function level(nodeIndex: number): number {
  let k = 0;
  while (((nodeIndex >> k) & 1) === 1) k++;
  return k;
}

export function isLeafNode(nodeIndex: number): boolean {
  return nodeIndex % 2 === 0;
}

/** The number of leaves of a tree of `nodeCount` nodes. */
export function leafCount(nodeCount: number): number {
  return nodeCount === 0 ? 0 : (nodeCount + 1) / 2;
}

export function rootOf(nodeCount: number): number {
  let width = 1;
  while (width * 2 <= nodeCount) width *= 2;
  return width - 1;
}

export function leftChild(nodeIndex: number): number {
  return nodeIndex ^ (1 << (level(nodeIndex) - 1));
}

export function rightChild(nodeIndex: number): number {
  return nodeIndex ^ (3 << (level(nodeIndex) - 1));
}

/** The parent of a node that is not the root. */
export function parentOf(nodeIndex: number): number {
  const k = level(nodeIndex);
  const b = (nodeIndex >> (k + 1)) & 1;
  return (nodeIndex | (1 << k)) ^ (b << (k + 1));
}

/** The nodes from the node's parent up to the root (RFC 9420 §4.1.2: direct path). */
export function directPath(nodeIndex: number, nodeCount: number): number[] {
  const root = rootOf(nodeCount);
  const path: number[] = [];
  for (let x = nodeIndex; x !== root; ) {
    x = parentOf(x);
    path.push(x);
  }
  return path;
}

/** The sibling of `child` under its parent. */
export function siblingOf(child: number): number {
  const parent = parentOf(child);
  return child < parent ? rightChild(parent) : leftChild(parent);
}

/** The first and last leaf index under a node. */
export function leafRange(nodeIndex: number): [number, number] {
  const half = (1 << level(nodeIndex)) - 1;
  return [(nodeIndex - half) / 2, (nodeIndex + half) / 2];
}
