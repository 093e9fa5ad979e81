"""The official Python MCP SDK as a client of Sluice: connect, list the tools, call one.

    python3 python_client.py URL TOKEN MODE TOOL

MODE is the SDK's connect mode: `legacy` (the initialize handshake; the SDK offers its newest
handshake revision) or a modern revision such as `2026-07-28` (no handshake, no session). Prints
one JSON object: the negotiated protocol version, the tool names, and the tool's structured
answer. Run by tests/all/mcp.rs with the SDK from `scripts/dev` (SLUICE_MCP_PYTHON).
"""

import asyncio
import json
import os
import sys

sys.path.insert(0, os.environ["SLUICE_MCP_PYTHON"])

import httpx2  # noqa: E402
from mcp import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402


async def main(url, token, mode, tool):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
    async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        tools = await client.list_tools()
        result = await client.call_tool(tool, {})
        print(json.dumps({
            "protocol_version": client.protocol_version if hasattr(client, "protocol_version") else None,
            "tools": [t.name for t in tools.tools],
            "read_only": [bool(t.annotations and t.annotations.read_only_hint) for t in tools.tools],
            "is_error": result.is_error,
            "structured": result.structured_content,
        }))


asyncio.run(main(*sys.argv[1:5]))
