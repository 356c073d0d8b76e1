"""An outside MCP client (PyPI `mcp`, the official Python SDK) for the
`shepherd mcp` test: starts the server over stdio, lists its tools, calls
a few, and prints what it saw as one JSON object.

usage: mcp_client.py SHEPHERD_BINARY ALLOW_WRITES(0|1) AGENT WORKFLOW [URL TOKEN]

With URL (and TOKEN), it connects to a running `shepherd mcp --http` over
streamable HTTP instead of starting one on stdio.
"""
import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import create_mcp_http_client, streamable_http_client


def field(obj, *names):
    """The first of `names` the object has (the SDK renamed fields across
    versions: readOnlyHint / read_only_hint)."""
    for name in names:
        if obj is not None and hasattr(obj, name):
            return getattr(obj, name)
    return None


def result(answer):
    text = "".join(getattr(block, "text", "") for block in answer.content)
    return {"error": bool(field(answer, "isError", "is_error")), "text": text}


def transport(binary, allow):
    if len(sys.argv) > 6:
        url, token = sys.argv[5:7]
        client = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        return streamable_http_client(url, http_client=client)
    args = ["mcp"] + (["--allow-writes"] if allow == "1" else [])
    params = StdioServerParameters(command=binary, args=args, env=dict(os.environ))
    return stdio_client(params)


async def main():
    binary, allow, agent, workflow = sys.argv[1:5]
    seen = {}
    async with transport(binary, allow) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            seen["tools"] = {
                tool.name: {
                    "read_only": field(tool.annotations, "readOnlyHint", "read_only_hint"),
                    "destructive": field(tool.annotations, "destructiveHint", "destructive_hint"),
                    "required": (field(tool, "inputSchema", "input_schema") or {}).get("required", []),
                }
                for tool in tools
            }
            seen["list_agents"] = result(await session.call_tool("list_agents", {}))
            seen["approvals"] = result(await session.call_tool("list_approvals", {"state": "all"}))
            seen["explain"] = result(
                await session.call_tool("explain_workflow", {"workflow": workflow})
            )
            seen["missing"] = result(
                await session.call_tool("get_agent", {"agent": "no-such-agent"})
            )
            seen["restart"] = result(await session.call_tool("restart_agent", {"agent": agent}))
    print(json.dumps(seen))


asyncio.run(main())
