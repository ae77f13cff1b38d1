// Names for a few events seen everywhere, by their first topic (the keccak256
// of the event's signature), so the events view can say "Transfer" rather
// than only 0xddf2…b3ef.  Anything else is shown as its topic.  The tests
// check each topic against the keccak256 of its signature.

export const KNOWN_EVENTS = Object.freeze({
  "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef": "Transfer(address,address,uint256)",
  "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925": "Approval(address,address,uint256)",
  "0x17307eab39ab6107e8899845ad3d59bd9653f200f220920489ca2b5937696c31": "ApprovalForAll(address,address,bool)",
  "0xc3d58168c5ae7397731d063d5bbf3d657854427343f4c083240f7aacaa2d0f62":
    "TransferSingle(address,address,address,uint256,uint256)",
  "0x4a39dc06d4c0dbc64b70af90fd698a233a518aa5d07e595d983b8c0526c8f7fb":
    "TransferBatch(address,address,address,uint256[],uint256[])",
  "0xe1fffcc4923d04b559f4d29a8bfc6cda04eb5b0d3c460751c2402c5c5cc9109c": "Deposit(address,uint256)",
  "0x7fcf532c15f0a6db0bd6d0e038bea71d30d808c7d98cb3bf7268a95bf5081b65": "Withdrawal(address,uint256)",
  "0x1c411e9a96e071241c2f21f7726b17ae89e3cab4c78be50e062b03a9fffbbad1": "Sync(uint112,uint112)",
  "0xd78ad95fa46c994b6551d0da85fc275fe613ce37657fb8d5e3d130840159d822":
    "Swap(address,uint256,uint256,uint256,uint256,address)",
  "0xc42079f94a6350d7e6235f29174924f928cc2ac818eb64fed8004e115fbcca67":
    "Swap(address,address,int256,int256,uint160,uint128,int24)",
  "0x4c209b5fc8ad50758f13e2e1088ba56a560dff690a1c6fef26394f4c03821c4f": "Mint(address,uint256,uint256)",
  "0xdccd412f0b1252819cb1fd330b93224ca42612892bb3f4f789976e6d81936496": "Burn(address,uint256,uint256,address)",
  "0x8be0079c531659141344cd1fd0a4f28419497f9722a3daafe3b4186f6b6457e0": "OwnershipTransferred(address,address)",
  // Polygon's fee and MATIC transfer events, in nearly every Polygon block.
  "0x4dfe1bbbcf077ddc3e01291eea2d5c70c2b422b415d95645b9adcfd678cb1d63":
    "LogFeeTransfer(address,address,address,uint256,uint256,uint256,uint256,uint256)",
  "0xe6497e3ee548a3372136af2fcb0696db31fc6cf20260707645068bd3fe97f3c4":
    "LogTransfer(address,address,address,uint256,uint256,uint256,uint256,uint256)",
});

/** The signature of a known event's first topic ("Transfer(address,address,uint256)"), or null. */
export function eventSignature(topic) {
  return (typeof topic === "string" && Object.hasOwn(KNOWN_EVENTS, topic)) ? KNOWN_EVENTS[topic] : null;
}

/** "Transfer" for a known first topic, or null. */
export function eventName(topic) {
  const signature = eventSignature(topic);
  return signature ? signature.slice(0, signature.indexOf("(")) : null;
}
