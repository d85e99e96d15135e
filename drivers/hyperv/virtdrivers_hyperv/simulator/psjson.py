"""What Windows PowerShell 5.1 writes: ``ConvertTo-Json`` text and CLIXML error streams."""

from __future__ import annotations

import datetime
import json
from typing import Any
from xml.sax.saxutils import escape

__all__ = ["clixml_error", "convert_to_json"]

# ConvertTo-Json in 5.1 (JavaScriptSerializer underneath) escapes these as \uXXXX.
_ESCAPED = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027"}


def _to_string(value: Any) -> str:
    """What ``ToString()`` prints for objects past ``-Depth``."""
    if isinstance(value, dict):
        return "@{" + "; ".join(f"{k}={_to_string(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return " ".join(_to_string(v) for v in value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _prepare(value: Any, depth: int, level: int) -> Any:
    if isinstance(value, datetime.datetime):
        ms = int(value.timestamp() * 1000)
        return f"/Date({ms})/"
    if isinstance(value, (dict, list)) and level > depth:
        return _to_string(value)
    if isinstance(value, dict):
        return {k: _prepare(v, depth, level + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_prepare(v, depth, level + 1) for v in value]
    return value


def convert_to_json(value: Any, *, depth: int = 2, compress: bool = False, pipeline: bool = True) -> str | None:
    """``value | ConvertTo-Json``: an empty pipeline writes nothing, one item is written unwrapped."""
    if pipeline and isinstance(value, list):
        if not value:
            return None
        if len(value) == 1:
            value = value[0]
    prepared = _prepare(value, depth, 0)
    if compress:
        text = json.dumps(prepared, ensure_ascii=False, separators=(",", ":"))
    else:
        text = json.dumps(prepared, ensure_ascii=False, indent=4)
    # "\/Date(...)\/" is how 5.1 writes dates; json.dumps writes "/" unescaped.
    text = text.replace("/Date(", "\\/Date(").replace(")/", ")\\/")
    for char, esc in _ESCAPED.items():
        text = text.replace(char, esc)
    return text


def _clixml_text(text: str) -> str:
    out = escape(text)
    return out.replace("\r", "_x000D_").replace("\n", "_x000A_")


def clixml_error(
    *, cmdlet: str, message: str, category: str, error_id: str, target: str, exception: str, line: int = 1
) -> bytes:
    """The stderr stream of powershell.exe for one terminating error, as WinRM carries it."""
    lines = [
        f"{cmdlet} : {message}\r\n",
        f"At line:{line} char:1\r\n",
        f"+ {cmdlet} ...\r\n",
        "+ ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~\r\n",
        f"    + CategoryInfo          : {category}: ({target}:String) [{cmdlet}], {exception}\r\n",
        f"    + FullyQualifiedErrorId : {error_id}\r\n",
        " \r\n",
    ]
    progress = (
        '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
        '<T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules for first '
        "use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR><SD> </SD></PR></MS></Obj>"
    )
    body = "".join(f'<S S="Error">{_clixml_text(s)}</S>' for s in lines)
    xml = f'<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">{progress}{body}</Objs>'
    return ("#< CLIXML\r\n" + xml).encode("utf-8")
