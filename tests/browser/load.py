"""A short mixed load on a ``cato serve`` for the dashboard's browser test: two users,
three task kinds, a burst that breaks the SLA (so the service scales) then a trickle.

    python tests/browser/load.py URL SECONDS TOKEN [TOKEN ...]
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time

import aiohttp

BODIES = [
    {"kind": "complete", "prompt": "def fibonacci(n):\n", "max_tokens": 16},
    {"kind": "generate", "code": "# parse a CSV line into fields", "max_tokens": 32},
    {"kind": "summarize", "code": "def add(a, b):\n    return a + b\n", "max_tokens": 24},
]


async def worker(http: aiohttp.ClientSession, url: str, token: str, until: float, n: int) -> int:
    done = 0
    for body in itertools.islice(itertools.cycle(BODIES), n, None):
        if time.monotonic() > until:
            return done
        headers = {"Authorization": f"Bearer {token}"}
        async with http.post(url + "/v1/tasks", json=body, headers=headers) as r:
            await r.read()
            done += r.status == 200
    return done


async def main(url: str, seconds: float, tokens: list[str]) -> None:
    until = time.monotonic() + seconds
    burst_until = time.monotonic() + seconds / 2
    async with aiohttp.ClientSession() as http:
        # A burst of 24 at once for the first half, then 3 at a time: alice asks more.
        burst = [
            worker(http, url, tokens[i % len(tokens) if i % 3 else 0], burst_until, i)
            for i in range(24)
        ]
        first = sum(await asyncio.gather(*burst))
        trickle = [worker(http, url, tokens[i % len(tokens)], until, i) for i in range(3)]
        second = sum(await asyncio.gather(*trickle))
    print(f"load: {first + second} tasks done ({first} in the burst)")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3:]))
