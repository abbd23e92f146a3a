"""The autoinformer's refusals (autoinformer.md §11), one class per result code.

The campaign service raises them; the API maps each to its ``result`` in one table
(``vpbx.autoinformer.api``), and the cabinet shows ``msgid`` (an English catalog message) next to ``field``.
``field`` names the offending part of the campaign object the way the API reports it: dots and ``[i]``, e.g.
``message.segments[1].text``.

    VpbxError
    └── AutoinformerError (code, field, msgid)
        ├── CampaignNotFound        -40  campaign-not-found
        ├── CampaignInvalid         -1   a setting or the list fails a rule that needs the database
        ├── CallerIdNotAllowed      -42  caller-id-not-allowed
        ├── AudioInvalid            -43  audio-invalid (``reason``)
        ├── LimitExceeded           -44  limit-exceeded
        ├── NotEditable             -45  not-editable
        └── TargetNotFound          -46  target-not-found

A refused status move is ``vpbx.autoinformer.status.InvalidTransition`` (-41).
"""

from __future__ import annotations

from vpbx.errors import VpbxError


def N_(msgid: str) -> str:
    """Marks a message for the cabinet's catalog; translated where it is shown."""
    return msgid


class AutoinformerError(VpbxError):
    code = "autoinformer-error"

    def __init__(self, msgid: str, *, field: str | None = None, **params: object) -> None:
        super().__init__(msgid.format(**params) if params else msgid, details={"field": field, **params})
        self.msgid = msgid
        self.field = field
        self.params = params


class CampaignNotFound(AutoinformerError):
    code = "campaign-not-found"

    def __init__(self) -> None:
        super().__init__(N_("No such campaign"), field="campaign_id")


class CampaignInvalid(AutoinformerError):
    code = "campaign-invalid"


class CallerIdNotAllowed(AutoinformerError):
    code = "caller-id-not-allowed"

    def __init__(self) -> None:
        super().__init__(
            N_("The caller ID must be an active line of the domain allowed for outgoing calls"),
            field="caller_id",
        )


class AudioInvalid(AutoinformerError):
    """Unknown ``file_id`` (``reason`` ``unknown_file``), or an upload that cannot be used: ``reason`` is one
    of ``unsupported_format``, ``too_large``, ``too_long``, ``decode_failed`` (§3.1)."""

    code = "audio-invalid"

    def __init__(self, reason: str, *, field: str | None = None) -> None:
        super().__init__(_AUDIO_MSGIDS.get(reason, N_("The audio file cannot be used")), field=field)
        self.reason = reason


_AUDIO_MSGIDS = {
    "unknown_file": N_("No such file in the domain's audio library"),
    "unsupported_format": N_("Unsupported file: upload a WAV or MP3 file"),
    "too_large": N_("The file is too large"),
    "too_long": N_("The recording is too long (at most 10 min)"),
    "decode_failed": N_("The file is damaged and cannot be decoded"),
}


class LimitExceeded(AutoinformerError):
    code = "limit-exceeded"


class NotEditable(AutoinformerError):
    code = "not-editable"


class TargetNotFound(AutoinformerError):
    code = "target-not-found"

    def __init__(self, field: str) -> None:
        super().__init__(N_("The connect target does not exist in the domain"), field=field)
