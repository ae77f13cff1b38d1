"""
web3.py against explorerd's /v1/rpc, unchanged: one JSON line on stdout per event.

    python rpc_web3.py URL blocks N            eth.subscribe("newHeads"): the first N headers
    python rpc_web3.py URL logs N ADDRESS      eth.subscribe("logs", {"address": ADDRESS}): the first N logs
"""

import asyncio
import json
import sys

from web3 import AsyncWeb3, WebSocketProvider


def say(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def main(url, mode, count, address=None):
    async with AsyncWeb3(WebSocketProvider(url)) as w3:
        say(event="chainId", chainId=await w3.eth.chain_id)
        if mode == "blocks":
            await w3.eth.subscribe("newHeads")
        else:
            await w3.eth.subscribe("logs", {"address": w3.to_checksum_address(address)})
        say(event="listening")
        seen = 0
        async for payload in w3.socket.process_subscriptions():
            result = payload["result"]
            if mode == "blocks":
                say(event="block", number=result["number"], hash="0x" + bytes(result["hash"]).hex())
            else:
                say(event="log", blockNumber=result["blockNumber"], logIndex=result["logIndex"],
                    transactionHash="0x" + bytes(result["transactionHash"]).hex(),
                    topics=["0x" + bytes(t).hex() for t in result["topics"]], data="0x" + bytes(result["data"]).hex(),
                    removed=result["removed"])
            seen += 1
            if seen == count:
                break
    say(event="done")


if __name__ == "__main__":
    url, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    asyncio.run(main(url, mode, count, *sys.argv[4:5]))
