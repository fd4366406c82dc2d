"""The Space as an MCP server: `python app.py` serves Gradio's own at /gradio_api/mcp/, with the tools predict_film
and evaluate and no others, called here through the `mcp` Python client as an assistant calls them."""

import asyncio
import base64
import json
import zipfile
from pathlib import Path

import pytest
from test_app import start_app

from pneumo_hf.examples import find_examples


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory):
    yield from start_app(tmp_path_factory.mktemp("mcp_app"))


def data_uri(path: Path, kind: str = "image/jpeg") -> str:
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def session_call(url: str, calls: list[tuple[str, dict]]):
    """List the tools, then make each call in one MCP session; returns (tools, results)."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        async with streamable_http_client(f"{url}gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                return tools, [await session.call_tool(name, arguments) for name, arguments in calls]

    return asyncio.run(run())


def texts(result) -> list[str]:
    return [content.text for content in result.content if content.type == "text"]


@pytest.mark.slow
def test_an_assistant_lists_two_tools_and_predicts_a_real_film(mcp_server, tmp_path):
    film = next(path for path in find_examples()[0] if path.parent.name == "PNEUMONIA")
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"minutes of the ward meeting, not an image\n")
    archive = tmp_path / "films.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in find_examples()[0]:
            bundle.write(path, f"{path.parent.name}/{path.name}")
    tools, (good, broken, checked) = session_call(mcp_server, [
        ("predict_film", {"film": data_uri(film)}),
        ("predict_film", {"film": data_uri(bad, "image/png")}),
        ("evaluate", {"archive": data_uri(archive, "application/zip")}),
    ])
    assert sorted(tool.name for tool in tools) == ["evaluate", "predict_film"]  # the page's helper events are not tools
    for tool in tools:
        assert "Not a medical device" in tool.description and "chest" in tool.description
    predict, evaluate = sorted(tools, key=lambda tool: tool.name, reverse=True)
    assert "frontal chest X-ray (a JPEG, PNG, WebP, BMP, TIFF, GIF or DICOM file)" in predict.description and "labels.csv" in evaluate.description
    assert "URL or a base64 data URI" in predict.inputSchema["properties"]["film"]["description"]

    assert not good.isError
    answer = texts(good)[0]
    assert "'decision': 'PNEUMONIA'" in answer and "'threshold'" in answer and "'warnings': []" in answer and "'probabilities'" in answer
    assert [content.mimeType for content in good.content if content.type == "image"] == ["image/jpeg"]  # the heatmap as an image

    assert broken.isError
    assert texts(broken) and "not an image we can read" in texts(broken)[0] and "Traceback" not in " ".join(texts(broken))

    assert not checked.isError and "'n': 8" in texts(checked)[0]


@pytest.mark.slow
def test_the_mcp_server_is_off_when_the_operator_says_so(tmp_path):
    import urllib.error
    import urllib.request

    for url in start_app(tmp_path, GRADIO_MCP_SERVER="False"):
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}gradio_api/mcp/", timeout=10)
        config = json.loads(urllib.request.urlopen(f"{url}config", timeout=10).read())
        assert config.get("mcp_server") is False
