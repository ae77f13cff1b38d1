// viem against explorerd's /v1/rpc over its webSocket transport, unchanged: one JSON line per event.
// node rpc-viem.mjs URL blocks N            watchBlocks: the first N blocks (number and hash)
// node rpc-viem.mjs URL logs N ADDRESS      watchContractEvent(Transfer): the first N events
import { createPublicClient, parseAbi, webSocket } from "viem";

const [url, mode, count, address] = process.argv.slice(2);
const want = Number(count);
const transport = webSocket(url);
const client = createPublicClient({ transport });
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
let seen = 0;
let unwatch;

async function done() {
  say({ event: "done" });
  unwatch();
  const { socket } = await client.transport.getRpcClient();
  socket.close();
  process.exit(0);
}

say({ event: "chainId", chainId: await client.getChainId() });
if (mode === "blocks") {
  unwatch = client.watchBlocks({
    onBlock: async (block) => {
      say({ event: "block", number: Number(block.number), hash: block.hash, parentHash: block.parentHash });
      if (++seen === want) await done();
    },
    onError: (error) => say({ event: "error", message: String(error) }),
  });
} else {
  unwatch = client.watchContractEvent({
    address,
    abi: parseAbi(["event Transfer(address indexed from, address indexed to, uint256 value)"]),
    eventName: "Transfer",
    onLogs: async (logs) => {
      for (const log of logs) {
        say({ event: "log", from: log.args.from.toLowerCase(), to: log.args.to.toLowerCase(),
              value: log.args.value.toString(), blockNumber: Number(log.blockNumber),
              transactionHash: log.transactionHash, logIndex: log.logIndex, removed: log.removed });
        if (++seen === want) await done();
      }
    },
    onError: (error) => say({ event: "error", message: String(error) }),
  });
}
say({ event: "listening" });
