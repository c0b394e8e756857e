"""A SIP user agent server over UDP (RFC 3261): answers calls into ordinary Parley sessions.

    INVITE   offer read (sdp.py) → 200 OK with the answer, resent until ACK; 488 when no G.711 Parley allows
             is offered or the SDP is broken; 486 Busy Here at capacity; 503 while the models load
    ACK      stops the 200 OK retransmissions
    BYE      200 OK, session closed          CANCEL   200 OK (calls are answered at once, so it is too late)
    OPTIONS  200 OK (trunk keep-alives)      others   405 Method Not Allowed
    re-INVITE  new offer applied to the call (hold, moved media), answered like an INVITE

When Parley ends a call (media timeout, server shutdown) it sends BYE to where the INVITE came from, with the
INVITE's Record-Route as its route set. Responses always go back to the request's source address (symmetric
signalling, RFC 3581 style), which is what trunks and NATs expect.

No maintained asyncio SIP library fit; docs/TELEPHONY.md says which were evaluated and why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web

from realtime import metrics
from realtime.config import sip_digest_password
from realtime.engine import CapacityError
from realtime.transports import phone, sdp, sipaccess, sipmsg
from realtime.transports.owned_tasks import OwnedTasks
from realtime.transports.sipcall import SipCall
from realtime.transports.sipmsg import SipMessage

if TYPE_CHECKING:
    from realtime.engine import Engine

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS"
T1, T2 = 0.5, 4.0  # RFC 3261 timers: first retransmission interval, and its cap
TRANSACTION_S = 64 * T1  # how long a final response is kept to answer retransmitted requests
RETRY_AFTER_S = 5
USER_AGENT = "Parley"


@dataclass
class Dialog:
    """What is needed to answer inside the call and to hang it up from our side."""

    call: SipCall
    invite: SipMessage
    peer: tuple[str, int]
    local_tag: str
    answer: bytes = b""  # the last 2xx sent, resent until ACK
    acked: bool = False
    sdp_session: int = field(default_factory=sdp.new_session_id)
    sdp_version: int = 1
    local_cseq: int = 0
    retransmit: asyncio.Task[None] | None = None


@dataclass
class Stats:
    requests: dict[str, int] = field(default_factory=dict)
    responses: dict[int, int] = field(default_factory=dict)
    malformed: int = 0
    forbidden: int = 0
    unauthorized: int = 0


class SipServer(asyncio.DatagramProtocol):
    def __init__(self, engine: Engine, directory: dict[str, Any]) -> None:
        self.engine = engine
        self.config = engine.config.telephony
        self._directory = directory
        self.dialogs: dict[str, Dialog] = {}
        self.stats = Stats()
        self.port = 0
        self._transport: asyncio.DatagramTransport | None = None
        self._finals: dict[tuple[str, str, int], tuple[float, bytes]] = {}  # (call-id, branch, cseq) -> response
        self._byes: dict[str, asyncio.Task[None]] = {}  # branch -> retransmission of a BYE we sent
        self._answering: set[str] = set()  # Call-IDs whose INVITE is being set up (an RTP port being bound)
        self._tasks = OwnedTasks()
        self._sources = sipaccess.SourceFilter(self.config.sip_allowed_sources)
        self._digest = sipaccess.DigestAuth(self.config.sip_digest_user, sip_digest_password(self.config))
        self._refused_logged: set[str] = set()

    @property
    def public_host(self) -> str:
        return self.config.rtp_public_ip or self.config.sip_host

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=(self.config.sip_host, self.config.sip_port))
        log.info("SIP listening on udp %s:%d (codecs %s)", self.config.sip_host, self.port,
                 ", ".join(self.config.codecs))

    async def stop(self) -> None:
        for dialog in list(self.dialogs.values()):
            await dialog.call.close("server_shutdown")  # sends BYE through on_call_closed
        if self._byes:
            await asyncio.wait(list(self._byes.values()), timeout=1.0)
        self._tasks.cancel_all()
        for task in self._byes.values():
            task.cancel()
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.DatagramProtocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)  # uvloop's UDP transport is not a subclass
        self.port = int(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        peer = (str(addr[0]), int(addr[1]))
        if not data.strip():
            return  # CRLF keep-alive (RFC 5626)
        try:
            message = sipmsg.parse(data)
        except sipmsg.SipParseError as exc:
            self.stats.malformed += 1
            log.warning("SIP from %s:%d: %s", *peer, exc)
            if exc.partial is not None and exc.partial.is_request and exc.partial.get("via"):
                self._send(sipmsg.response(exc.partial, 400, "Bad Request", extra=self._headers(str(exc))), peer)
            return
        if not self._sources.allows(peer[0]):
            self._forbid(message, peer)
            return
        if not message.is_request:
            self._response(message)
            return
        self.stats.requests[message.method] = self.stats.requests.get(message.method, 0) + 1
        missing = sipmsg.missing_headers(message)
        if missing:
            log.warning("SIP %s from %s:%d lacks %s", message.method, *peer, ", ".join(missing))
            if "via" not in missing and message.method != "ACK":
                self._reply(message, peer, 400, "Bad Request", warning=f"missing {', '.join(missing)}")
            return
        try:
            self._request(message, peer)
        except Exception:
            # One bad request must not take down the listener every other call depends on.
            log.exception("SIP %s from %s:%d failed", message.method, *peer)
            if message.method != "ACK":
                self._reply(message, peer, 500, "Server Internal Error")

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP socket error: %s", exc)

    # --- requests --------------------------------------------------------------------------------------------

    def _request(self, message: SipMessage, peer: tuple[str, int]) -> None:
        method = message.method
        dialog = self.dialogs.get(message.call_id)
        if method in ("INVITE", "CANCEL", "BYE", "OPTIONS") and self._resend_final(message, peer):
            return
        if method == "INVITE":
            if not message.to_tag and dialog is None and not self._authorized(message, peer):
                return
            if not message.to_tag:
                if dialog is not None:  # retransmission of the INVITE already answered
                    self._send(dialog.answer, peer)
                elif message.call_id not in self._answering:
                    self._spawn(self._invite(message, peer))
            elif dialog is not None and message.to_tag == dialog.local_tag:
                self._reinvite(dialog, message, peer)
            else:
                self._reply(message, peer, 481, "Call/Transaction Does Not Exist")
        elif method == "ACK":
            if dialog is not None and message.to_tag == dialog.local_tag:
                dialog.acked = True
                if dialog.retransmit is not None:
                    dialog.retransmit.cancel()
        elif method == "BYE":
            if dialog is None or message.to_tag != dialog.local_tag:
                self._reply(message, peer, 481, "Call/Transaction Does Not Exist")
                return
            self._reply(message, peer, 200, "OK", to_tag=dialog.local_tag)
            del self.dialogs[message.call_id]  # closing below must not send a BYE back
            self._spawn(dialog.call.close("hangup"))
        elif method == "CANCEL":
            # The INVITE was answered when it arrived: per RFC 3261 §9.2 the CANCEL has no effect now.
            status = (200, "OK") if dialog is not None else (481, "Call/Transaction Does Not Exist")
            self._reply(message, peer, *status)
        elif method == "OPTIONS":
            self._reply(message, peer, 200, "OK", extra=[("Accept", "application/sdp")])
        else:
            self._reply(message, peer, 405, "Method Not Allowed")

    def _forbid(self, message: SipMessage, peer: tuple[str, int]) -> None:
        self.stats.forbidden += 1
        if peer[0] not in self._refused_logged and len(self._refused_logged) < 64:
            self._refused_logged.add(peer[0])
            log.warning("SIP from %s:%d refused: not in [telephony].sip_allowed_sources", *peer)
        # A response needs the request's Via, From, To, Call-ID and CSeq; a stranger's broken request gets nothing.
        if message.is_request and message.method != "ACK" and not sipmsg.missing_headers(message):
            self._reply(message, peer, 403, "Forbidden", warning="source address not allowed")

    def _authorized(self, invite: SipMessage, peer: tuple[str, int]) -> bool:
        """With digest authentication on, a new INVITE without valid credentials gets a 401 challenge."""
        if not self._digest.enabled:
            return True
        if self._digest.verify("INVITE", invite.get("authorization") or ""):
            return True
        self.stats.unauthorized += 1
        log.info("SIP INVITE %s from %s:%d challenged (%s)", invite.call_id, *peer,
                 "wrong credentials" if invite.get("authorization") else "no credentials")
        self._reply(invite, peer, 401, "Unauthorized", extra=[("WWW-Authenticate", self._digest.challenge())])
        return False

    async def _invite(self, invite: SipMessage, peer: tuple[str, int]) -> None:
        self._answering.add(invite.call_id)
        try:
            await self._setup(invite, peer)
        finally:
            self._answering.discard(invite.call_id)

    async def _setup(self, invite: SipMessage, peer: tuple[str, int]) -> None:
        call_id = invite.call_id
        local_tag = sipmsg.new_tag()
        try:
            media = self._negotiate(invite)
        except sdp.SdpError as exc:
            log.info("SIP INVITE %s from %s:%d refused: %s", call_id, *peer, exc)
            self._reply(invite, peer, 488, "Not Acceptable Here", to_tag=local_tag, warning=str(exc))
            return
        refusal = self.engine.refusal()
        if refusal == "capacity":
            self._busy(invite, peer, local_tag)
            return
        if refusal is not None:  # loading or draining: another server can take the call now
            metrics.REJECTED.labels(refusal).inc()
            self._reply(invite, peer, 503, "Service Unavailable", to_tag=local_tag,
                        warning=self.engine.refusal_message(refusal), extra=[("Retry-After", str(RETRY_AFTER_S))])
            return
        number = sipmsg.user_of(invite.uri) or sipmsg.user_of(sipmsg.uri_of(invite.get("to") or ""))
        settings = phone.settings_for(self.engine, number)
        call = SipCall(self.engine, call_id, media, peer[0], self._call_closed)
        try:
            await call.bind(self.config.sip_host, self.config.rtp_port_min, self.config.rtp_port_max)
        except OSError as exc:
            log.error("SIP INVITE %s: %s", call_id, exc)
            self._reply(invite, peer, 503, "Service Unavailable", to_tag=local_tag, warning="no free RTP port",
                        extra=[("Retry-After", str(RETRY_AFTER_S))])
            return
        try:
            call.start(settings)
        except CapacityError:
            await call.close("setup_failed")
            self._busy(invite, peer, local_tag)
            return
        assert call.session is not None
        dialog = Dialog(call, invite, peer, local_tag)
        self.dialogs[call_id] = dialog
        self._directory[call_id] = call.session
        log.info("SIP call %s from %s:%d to %r (%s, dtmf pt %s) -> session %s, rtp :%d -> %s:%d", call_id, *peer,
                 number, media.codec, media.dtmf_payload_type, call.session.id, call.local_port, *media.remote)
        self._answer(dialog, invite, media)

    def _reinvite(self, dialog: Dialog, invite: SipMessage, peer: tuple[str, int]) -> None:
        if not invite.body:
            # An offerless re-INVITE (a session refresh) gets the current session again as our offer.
            self._answer(dialog, invite, dialog.call.media)
            return
        try:
            media = self._negotiate(invite)
        except sdp.SdpError as exc:
            self._reply(invite, peer, 488, "Not Acceptable Here", to_tag=dialog.local_tag, warning=str(exc))
            return
        dialog.call.update(media, peer[0])
        dialog.sdp_version += 1
        self._answer(dialog, invite, media)

    def _negotiate(self, invite: SipMessage) -> sdp.Negotiated:
        content_type = (invite.get("content-type") or "").split(";")[0].strip().lower()
        if not invite.body:
            raise sdp.NotAcceptable("the INVITE carries no SDP offer (offerless INVITEs are not supported)")
        if content_type != "application/sdp":
            raise sdp.NotAcceptable(f"the INVITE body is {content_type or 'untyped'}, not application/sdp")
        try:
            text = invite.body.decode("utf-8")
        except UnicodeDecodeError:
            raise sdp.SdpError("the SDP is not UTF-8") from None
        ipv6 = ":" in self.config.sip_host
        return sdp.negotiate(sdp.parse(text), self.config.codecs, ipv6=ipv6)

    def _answer(self, dialog: Dialog, invite: SipMessage, media: sdp.Negotiated) -> None:
        port = dialog.call.local_port
        body = sdp.answer(media, self.public_host, port, dialog.sdp_session, dialog.sdp_version).encode()
        extra = [("Contact", f"<sip:parley@{self._hostport()}>"), ("Content-Type", "application/sdp")]
        dialog.answer = sipmsg.response(invite, 200, "OK", dialog.local_tag, self._headers() + extra, body)
        dialog.acked = False
        self._count(200)
        self._send(dialog.answer, dialog.peer)
        if dialog.retransmit is not None:
            dialog.retransmit.cancel()
        dialog.retransmit = asyncio.create_task(self._retransmit_answer(dialog))

    async def _retransmit_answer(self, dialog: Dialog) -> None:
        """RFC 3261 §13.3.1.4: over UDP the 2xx is resent (T1, 2·T1, … capped at T2) until ACK, or 64·T1."""
        interval, waited = T1, 0.0
        while waited < TRANSACTION_S:
            await asyncio.sleep(interval)
            waited += interval
            if dialog.acked:
                return
            self._send(dialog.answer, dialog.peer)
            interval = min(2 * interval, T2)
        log.warning("SIP call %s: no ACK for the 200 OK in %.0f s, hanging up", dialog.invite.call_id, waited)
        await dialog.call.close("no_ack")

    def _busy(self, invite: SipMessage, peer: tuple[str, int], local_tag: str) -> None:
        metrics.REJECTED.labels("capacity").inc()
        self._reply(invite, peer, 486, "Busy Here", to_tag=local_tag, warning="Parley is at capacity",
                    extra=[("Retry-After", str(RETRY_AFTER_S))])

    # --- calls ending ----------------------------------------------------------------------------------------

    def _call_closed(self, call: SipCall, reason: str) -> None:
        self._directory.pop(call.call_id, None)
        dialog = self.dialogs.pop(call.call_id, None)
        if dialog is None:
            return  # the caller hung up (BYE), or the call never got as far as a dialog
        if dialog.retransmit is not None and dialog.retransmit is not asyncio.current_task():
            dialog.retransmit.cancel()
        self._send_bye(dialog)

    def _send_bye(self, dialog: Dialog) -> None:
        invite = dialog.invite
        dialog.local_cseq += 1
        branch = sipmsg.new_branch()
        target = sipmsg.uri_of(invite.get("contact") or invite.get("from") or "")
        headers = [
            ("Via", f"SIP/2.0/UDP {self._hostport()};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"{invite.get('to')};tag={dialog.local_tag}"),
            ("To", invite.get("from") or ""),
            ("Call-ID", invite.call_id),
            ("CSeq", f"{dialog.local_cseq} BYE"),
            *(("Route", route) for route in invite.get_all("record-route")),
            ("User-Agent", USER_AGENT),
        ]
        packet = sipmsg.request("BYE", target, headers)
        self._byes[branch] = asyncio.create_task(self._retransmit_bye(branch, packet, dialog.peer))

    async def _retransmit_bye(self, branch: str, packet: bytes, peer: tuple[str, int]) -> None:
        """Non-INVITE client transaction over UDP (RFC 3261 §17.1.2), cut short: a few tries, then give up."""
        try:
            interval = T1
            for _ in range(5):
                self._send(packet, peer)
                await asyncio.sleep(interval)
                interval = min(2 * interval, T2)
        finally:
            self._byes.pop(branch, None)

    def _response(self, message: SipMessage) -> None:
        task = self._byes.pop(message.branch, None)
        if task is not None and message.status >= 200:
            task.cancel()

    # --- sending ---------------------------------------------------------------------------------------------

    def _reply(self, request: SipMessage, peer: tuple[str, int], status: int, reason: str, to_tag: str = "",
               warning: str = "", extra: list[tuple[str, str]] | None = None) -> None:
        data = sipmsg.response(request, status, reason, to_tag or sipmsg.new_tag(),
                               self._headers(warning) + (extra or []))
        self._count(status)
        self._send(data, peer)
        if request.method != "ACK":
            self._remember_final(request, data)

    def _headers(self, warning: str = "") -> list[tuple[str, str]]:
        headers = [("Server", USER_AGENT), ("Allow", ALLOW)]
        if warning:
            # RFC 3261 §20.43: 399 is the miscellaneous warning; the text says what was wrong.
            text = warning.replace("\\", "").replace('"', "'")[:200]
            headers.append(("Warning", f'399 {self._hostport()} "{text}"'))
        return headers

    def _remember_final(self, request: SipMessage, data: bytes) -> None:
        try:
            cseq = request.cseq[0]
        except sipmsg.SipParseError:
            return  # a 400 for a broken CSeq: nothing to match a retransmission against
        now = time.monotonic()
        if len(self._finals) > 256:
            self._finals = {k: v for k, v in self._finals.items() if now - v[0] < TRANSACTION_S}
        self._finals[(request.call_id, request.branch, cseq)] = (now, data)

    def _resend_final(self, request: SipMessage, peer: tuple[str, int]) -> bool:
        """A retransmitted request whose transaction already ended gets the same final response again."""
        kept = self._finals.get((request.call_id, request.branch, request.cseq[0]))
        if kept is None or time.monotonic() - kept[0] > TRANSACTION_S:
            return False
        self._send(kept[1], peer)
        return True

    def _send(self, data: bytes, peer: tuple[str, int]) -> None:
        if self._transport is not None:
            self._transport.sendto(data, peer)

    def _count(self, status: int) -> None:
        self.stats.responses[status] = self.stats.responses.get(status, 0) + 1

    def _hostport(self) -> str:
        host = self.public_host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    def _spawn(self, coro: Any) -> None:
        self._tasks.spawn(coro)


_SERVER: web.AppKey[SipServer] = web.AppKey("sip_server", SipServer)


def add_server(app: web.Application, engine: Engine) -> None:
    """Run the SIP UA with the app: bound at startup, calls hung up (BYE) and the socket closed at shutdown."""
    server = SipServer(engine, phone.directory(app))
    app[_SERVER] = server

    async def start(app: web.Application) -> None:
        try:
            await server.start()
        except OSError as exc:
            # With several workers only one can hold the SIP port; the others still serve HTTP.
            log.error("SIP disabled in this worker: cannot bind udp %s:%d: %s", engine.config.telephony.sip_host,
                      engine.config.telephony.sip_port, exc)

    async def stop(app: web.Application) -> None:
        await server.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
