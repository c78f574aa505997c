"""Tell someone a night failed: POST a small JSON message to a webhook.

The URL comes from NIGHTREC_WEBHOOK_URL (the operator's environment wins, so a token never has to be
written into a config file) or else `[notify] webhook_url`. It may carry a token, so it is never logged,
never put in an artifact or the runs table, and never appears in the messages written here.

The request uses the standard library on purpose: httpx logs every request URL at INFO level on its
`httpx` logger, which a verbose logging setup would then print. A notification is best effort: any
failure is logged (without the URL) and swallowed, so it can never hide the error it reports.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

ENV_VAR = "NIGHTREC_WEBHOOK_URL"
TIMEOUT_S = 5.0
MAX_ERROR_CHARS = 2000

log = logging.getLogger(__name__)


def webhook_url(configured: str | None) -> str | None:
    """The URL to notify, or None when neither the environment nor the config names one."""
    return os.environ.get(ENV_VAR) or configured or None


def failure_message(
    *, run_date: str | None, step: str, error: str, flow_run_id: str | None, flow_run_name: str | None
) -> dict[str, Any]:
    """The JSON body. `text` makes it readable as is by Slack-style incoming webhooks."""
    error = error if len(error) <= MAX_ERROR_CHARS else error[: MAX_ERROR_CHARS - 1] + "…"
    return {
        "event": "nightrec.run_failed",
        "text": f"nightrec: the run for {run_date or 'an unknown date'} failed at step {step}: "
        f"{error.splitlines()[0] if error else ''}",
        "run_date": run_date,
        "step": step,
        "error": error,
        "flow_run_id": flow_run_id,
        "flow_run_name": flow_run_name,
    }


def post_json(url: str, message: dict[str, Any], timeout: float = TIMEOUT_S) -> bool:
    """POST `message`; True on a 2xx answer. Never raises, never logs the URL."""
    body = json.dumps(message, default=str).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return 200 <= response.status < 300
    except urllib.error.HTTPError as exc:
        log.warning("failure notification rejected by the webhook: HTTP %s", exc.code)
    except Exception as exc:  # a notification must never mask the failure it reports
        log.warning("failure notification not sent: %s", type(exc).__name__)
    return False
