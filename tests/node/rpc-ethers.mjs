// ethers v6 against explorerd's /v1/rpc, unchanged: one JSON line on stdout per event.
// node rpc-ethers.mjs URL blocks N            provider.on("block"): the first N block numbers (and hashes)
// node rpc-ethers.mjs URL logs N ADDRESS      getBalance and call, then contract.on("Transfer"): N events
// node rpc-ethers.mjs HTTP-URL http 0 ADDRESS  JsonRpcProvider over POST: chain, block number, balance, call, block
import { Contract, JsonRpcProvider, WebSocketProvider } from "ethers";

const [url, mode, count, address] = process.argv.slice(2);
const want = Number(count);
const provider = mode === "http" ? new JsonRpcProvider(url, undefined, { staticNetwork: true }) : new WebSocketProvider(url);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
let seen = 0;

async function done() {
  say({ event: "done" });
  await provider.destroy();
  process.exit(0);
}

say({ event: "chainId", chainId: Number((await provider.getNetwork()).chainId) });
if (mode === "http") {
  const account = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
  // Sent together: ethers batches them into one POST.
  const [number, balance, call] = await Promise.all([
    provider.getBlockNumber(), provider.getBalance(account), provider.call({ to: address, data: "0x" })]);
  const block = await provider.getBlock(number);
  say({ event: "reads", number, balance: balance.toString(), call, hash: block.hash });
  await done();
} else if (mode === "blocks") {
  await provider.on("block", async (number) => {
    say({ event: "block", number });
    if (++seen === want) await done();
  });
} else {
  // Reads forwarded to the node: a balance and a call, as any dapp makes them.
  const account = "0xf39fd6e51aad88f6f4ce6ab8827279cfffb92266";
  say({ event: "reads", balance: (await provider.getBalance(account)).toString(),
        call: await provider.call({ to: address, data: "0x" }) });
  const abi = ["event Transfer(address indexed from, address indexed to, uint256 value)"];
  const token = new Contract(address, abi, provider);
  await token.on("Transfer", async (from, to, value, payload) => {
    say({ event: "log", from: from.toLowerCase(), to: to.toLowerCase(), value: value.toString(),
          blockNumber: payload.log.blockNumber, transactionHash: payload.log.transactionHash,
          logIndex: payload.log.index, removed: payload.log.removed });
    if (++seen === want) await done();
  });
}
say({ event: "listening" });
