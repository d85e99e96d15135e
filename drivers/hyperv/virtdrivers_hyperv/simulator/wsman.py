"""The WS-Management remote shell protocol (MS-WSMV): Create, Command, Receive, Signal, Delete.

Commands run in a worker thread; Receive waits for output up to the request's
OperationTimeout and then answers with the w:TimedOut fault (code 2150858793), as
WinRM does, so clients must poll. Output larger than one Receive allows is split
over several, the last carrying ``CommandState/Done`` and the exit code.
"""

from __future__ import annotations

import base64
import functools
import re
import threading
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from virtdrivers_hyperv import scripts
from virtdrivers_hyperv.simulator import psjson
from virtdrivers_hyperv.simulator.handlers import depth_of, lookup
from virtdrivers_hyperv.simulator.model import Model, PipelineStopped, PSFault

__all__ = ["Fault", "ShellService"]

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
}
_ACTION = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/"
_TRANSFER = "http://schemas.xmlsoap.org/ws/2004/09/transfer/"
_DONE = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Done"
_RUNNING = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/CommandState/Running"
_DURATION = re.compile(r"^PT(\d+(?:\.\d+)?)S$")

TIMED_OUT = 2150858793
SHELL_NOT_FOUND = 2150858843


class Fault(Exception):
    def __init__(self, code: int, subcode: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.subcode = subcode
        self.reason = reason


@dataclass
class Command:
    id: str
    done: threading.Event = field(default_factory=threading.Event)
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    sent_out: int = 0
    sent_err: int = 0
    line: str = ""
    stdin: bytearray = field(default_factory=bytearray)
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass
class Shell:
    id: str
    commands: dict[str, Command] = field(default_factory=dict)


def _envelope(action: str, relates_to: str, body: str, extra_header: str = "") -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<s:Envelope xml:lang="en-US" xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" xmlns:x="{_TRANSFER[:-1]}" '
        f'xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}" '
        'xmlns:p="http://schemas.microsoft.com/wbem/wsman/1/wsman.xsd">'
        f"<s:Header><a:Action>{action}</a:Action><a:MessageID>uuid:{uuid.uuid4()}</a:MessageID>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo>{extra_header}</s:Header>"
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def fault_envelope(fault: Fault, relates_to: str = "") -> bytes:
    body = (
        f"<s:Fault><s:Code><s:Value>s:Receiver</s:Value><s:Subcode><s:Value>w:{fault.subcode}</s:Value>"
        f'</s:Subcode></s:Code><s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason>'
        f'<s:Detail><f:WSManFault xmlns:f="http://schemas.microsoft.com/wbem/wsman/1/wsmanfault" '
        f'Code="{fault.code}" Machine="localhost"><f:Message>{escape(fault.reason)}</f:Message></f:WSManFault>'
        "</s:Detail></s:Fault>"
    )
    return _envelope("http://schemas.dmtf.org/wbem/wsman/1/wsman/fault", relates_to, body)


class ShellService:
    """Remote shells and their commands, running the closed set of scripts against ``model``."""

    def __init__(self, model: Model, *, receive_chunk: int = 65536) -> None:
        self.model = model
        self.receive_chunk = receive_chunk
        self._shells: dict[str, Shell] = {}
        self._lock = threading.Lock()
        #: Requests served, by action name, for tests and the benchmark.
        self.requests: dict[str, int] = {}

    def handle(self, body: bytes) -> bytes:
        try:
            root = ET.fromstring(body)
        except ET.ParseError:
            raise Fault(2150858817, "InvalidMessageInformationHeader", "The request is not valid XML.") from None
        header = root.find("s:Header", NS)
        if header is None:
            raise Fault(2150858817, "InvalidMessageInformationHeader", "The SOAP header is missing.")
        action = (header.findtext("a:Action", "", NS) or "").strip()
        message_id = (header.findtext("a:MessageID", "", NS) or "").strip()
        name = action.rsplit("/", 1)[-1]
        self.requests[name] = self.requests.get(name, 0) + 1
        timeout = self._timeout(header.findtext("w:OperationTimeout", "", NS) or "")
        selector = header.find("w:SelectorSet/w:Selector[@Name='ShellId']", NS)
        shell_id = (selector.text or "") if selector is not None else ""
        soap_body = root.find("s:Body", NS)
        try:
            if action == _TRANSFER + "Create":
                return self._create(message_id)
            shell = self._shell(shell_id)
            if action == _ACTION + "Command":
                return self._command(shell, soap_body, message_id)
            if action == _ACTION + "Receive":
                return self._receive(shell, soap_body, message_id, timeout)
            if action == _ACTION + "Send":
                return self._send(shell, soap_body, message_id)
            if action == _ACTION + "Signal":
                return self._signal(shell, soap_body, message_id)
            if action == _TRANSFER + "Delete":
                with self._lock:
                    self._shells.pop(shell.id, None)
                return _envelope(_TRANSFER + "DeleteResponse", message_id, "")
        except Fault as fault:
            fault.relates_to = message_id  # type: ignore[attr-defined]
            raise
        raise Fault(2150858840, "ActionNotSupported", f"The action {action} is not supported.")

    @staticmethod
    def _timeout(text: str) -> float:
        m = _DURATION.match(text.strip())
        return float(m.group(1)) if m else 60.0

    def _shell(self, shell_id: str) -> Shell:
        with self._lock:
            shell = self._shells.get(shell_id)
        if shell is None:
            raise Fault(
                SHELL_NOT_FOUND,
                "InvalidSelectors",
                f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was "
                "not found on the server. Possible causes are: the specified ShellId is incorrect or the shell no "
                "longer exists on the server.",
            )
        return shell

    def _create(self, message_id: str) -> bytes:
        shell = Shell(str(uuid.uuid4()).upper())
        with self._lock:
            self._shells[shell.id] = shell
        body = (
            "<x:ResourceCreated><a:Address>http://localhost/wsman</a:Address><a:ReferenceParameters>"
            "<w:ResourceURI>http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd</w:ResourceURI>"
            f'<w:SelectorSet><w:Selector Name="ShellId">{shell.id}</w:Selector></w:SelectorSet>'
            "</a:ReferenceParameters></x:ResourceCreated>"
        )
        return _envelope(_TRANSFER + "CreateResponse", message_id, body)

    def _command(self, shell: Shell, body: ET.Element | None, message_id: str) -> bytes:
        line = ""
        if body is not None:
            cmd = body.find("rsp:CommandLine", NS)
            if cmd is not None:
                line = (cmd.findtext("rsp:Command", "", NS) or "").strip()
                args = cmd.findtext("rsp:Arguments", "", NS)
                if args:
                    line = f"{line} {args}"
        command = Command(str(uuid.uuid4()).upper(), line=line)
        shell.commands[command.id] = command
        if not self._reads_stdin(line):
            self._start(command)
        return _envelope(
            _ACTION + "CommandResponse",
            message_id,
            f"<rsp:CommandResponse><rsp:CommandId>{command.id}</rsp:CommandId></rsp:CommandResponse>",
        )

    @staticmethod
    def _reads_stdin(line: str) -> bool:
        try:
            return base64.b64decode(line.split()[-1]).decode("utf-16-le").startswith(scripts.STDIN_LINE)
        except (ValueError, IndexError, UnicodeDecodeError):
            return False

    def _start(self, command: Command) -> None:
        threading.Thread(target=self._run, args=(command,), name="sim-command", daemon=True).start()

    def _send(self, shell: Shell, body: ET.Element | None, message_id: str) -> bytes:
        stream = body.find("rsp:Send/rsp:Stream", NS) if body is not None else None
        if stream is None:
            raise Fault(2150858817, "InvalidMessageInformationHeader", "The Send request has no stream.")
        command = self._command_of(shell, stream.get("CommandId", ""))
        command.stdin += base64.b64decode(stream.text or "")
        if stream.get("End", "false").lower() == "true" and self._reads_stdin(command.line):
            self._start(command)
        return _envelope(_ACTION + "SendResponse", message_id, "<rsp:SendResponse/>")

    def _run(self, command: Command) -> None:
        try:
            self.model.cancel.event = command.cancel
            command.stdout, command.stderr, command.exit_code = self.execute(command.line, bytes(command.stdin))
        except PipelineStopped:
            command.stderr, command.exit_code = b"The pipeline has been stopped.\r\n", 1
        except Exception as exc:  # a simulator bug must still end the command
            command.stderr, command.exit_code = f"simulator error: {exc!r}".encode(), 1
        finally:
            command.done.set()

    def execute(self, line: str, stdin: bytes = b"") -> tuple[bytes, bytes, int]:
        """cmd.exe, then powershell.exe -encodedcommand, then the script."""
        if len(line) > scripts.CMD_LIMIT:
            return b"", b"The command line is too long.\r\n", 1
        parts = line.split()
        if len(parts) != 3 or parts[0].lower() != "powershell" or parts[1].lower() != "-encodedcommand":
            name = parts[0] if parts else ""
            return b"", f"'{name}' is not recognized as an internal or external command.\r\n".encode(), 1
        try:
            text = base64.b64decode(parts[2], validate=True).decode("utf-16-le")
            args, body = scripts.split_script(text, stdin)
        except (ValueError, UnicodeDecodeError):
            return (
                b"",
                self._error(
                    PSFault(
                        "",
                        "Unexpected token in expression or statement.",
                        "ParserError",
                        "UnexpectedToken",
                        "",
                        "ParseException",
                    )
                ),
                1,
            )
        found = lookup(body)
        stdin_form = text.startswith(scripts.STDIN_LINE)
        problems = _grammar_problems(found[0] if found else "<unknown script>", stdin_form, body)
        if problems:
            fault = PSFault(
                "",
                "The script fails the grammar-and-signature check: " + "; ".join(problems),
                "ParserError",
                "VDScriptCheck",
                "",
                "ParseException",
            )
            return b"", self._error(fault), 1
        if found is None:
            fault = PSFault(
                "",
                "The script is not in the simulator's closed set of supported scripts.",
                "ObjectNotFound",
                "CommandNotFoundException",
                "",
                "CommandNotFoundException",
            )
            return b"", self._error(fault), 1
        _, handler = found
        try:
            with self.model.lock:
                self.model.wl.tick()
                result = handler(self.model, args)
                self.model.wl.tick()
        except PSFault as fault:
            return b"", self._error(fault), 1
        return self._output(result, depth_of(body)), b"", 0

    @staticmethod
    def _output(result: Any, depth: int) -> bytes:
        text = psjson.convert_to_json(result, depth=depth, compress=True) or ""
        return base64.b64encode(text.encode("utf-8")) + b"\r\n"

    @staticmethod
    def _error(fault: PSFault) -> bytes:
        return psjson.clixml_error(
            cmdlet=fault.cmdlet or "Invoke-Expression",
            message=fault.message,
            category=fault.category,
            error_id=fault.error_id,
            target=fault.target,
            exception=fault.exception,
        )

    def _command_of(self, shell: Shell, command_id: str) -> Command:
        command = shell.commands.get(command_id)
        if command is None:
            raise Fault(2150858843, "InvalidSelectors", f"The command {command_id} was not found in the shell.")
        return command

    def _receive(self, shell: Shell, body: ET.Element | None, message_id: str, timeout: float) -> bytes:
        stream = body.find("rsp:Receive/rsp:DesiredStream", NS) if body is not None else None
        command = self._command_of(shell, stream.get("CommandId", "") if stream is not None else "")
        if not command.done.wait(timeout):
            raise Fault(
                TIMED_OUT,
                "TimedOut",
                "The WS-Management service cannot complete the operation within the time specified in "
                "OperationTimeout.",
            )
        chunk = self.receive_chunk
        out = command.stdout[command.sent_out : command.sent_out + chunk]
        command.sent_out += len(out)
        err = command.stderr[command.sent_err : command.sent_err + max(chunk - len(out), 0)]
        command.sent_err += len(err)
        finished = command.sent_out >= len(command.stdout) and command.sent_err >= len(command.stderr)
        parts = []
        for name, data in (("stdout", out), ("stderr", err)):
            if data:
                encoded = base64.b64encode(data).decode("ascii")
                parts.append(f'<rsp:Stream Name="{name}" CommandId="{command.id}">{encoded}</rsp:Stream>')
        if finished:
            parts.append(f'<rsp:Stream Name="stdout" CommandId="{command.id}" End="true"></rsp:Stream>')
            parts.append(f'<rsp:Stream Name="stderr" CommandId="{command.id}" End="true"></rsp:Stream>')
            state = (
                f'<rsp:CommandState CommandId="{command.id}" State="{_DONE}">'
                f"<rsp:ExitCode>{command.exit_code}</rsp:ExitCode></rsp:CommandState>"
            )
        else:
            state = f'<rsp:CommandState CommandId="{command.id}" State="{_RUNNING}"/>'
        body_xml = f"<rsp:ReceiveResponse>{''.join(parts)}{state}</rsp:ReceiveResponse>"
        return _envelope(_ACTION + "ReceiveResponse", message_id, body_xml)

    def _signal(self, shell: Shell, body: ET.Element | None, message_id: str) -> bytes:
        signal = body.find("rsp:Signal", NS) if body is not None else None
        command_id = signal.get("CommandId", "") if signal is not None else ""
        command = shell.commands.pop(command_id, None)
        if command is not None:
            command.cancel.set()  # terminate: powershell.exe is killed where it stands
        return _envelope(_ACTION + "SignalResponse", message_id, "<rsp:SignalResponse/>")

    def shells(self) -> int:
        with self._lock:
            return len(self._shells)


@functools.lru_cache(maxsize=256)
def _grammar_problems(name: str, stdin_form: bool, body: str) -> tuple[str, ...]:
    """:func:`virtdrivers_hyperv.pscheck.check` of a received script, as the driver's own test runs it.

    Cached per body: the argument line differs per call only inside its base64 literal (or is the
    fixed stdin line), which cannot change the grammar, so it is checked in a normalised form.
    """
    from virtdrivers_hyperv import pscheck

    line = scripts.STDIN_LINE if stdin_form else scripts.DATA_PREFIX + "e30=" + scripts.DATA_SUFFIX
    return tuple(str(p) for p in pscheck.check(line + body, name))
