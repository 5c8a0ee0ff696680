"""The admin API's door: `Authorization: Bearer <admin key>`, the keys of VQA_ADMIN_KEYS(_FILE).

Off unless admin keys are set: every admin route then answers 403 saying how to turn it on. API keys
never open it (the settings refuse a key that is both; the API-key layer leaves `/admin/` to this
check). Keys are compared in constant time by the API keys' own KeyChecker. With several worker
processes it stays off: each worker holds its own adapters and routes, and a change would reach one.
"""

from __future__ import annotations

import logging

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from vqaserve.errors import Forbidden, Unauthorized
from vqaserve.server.access import KeyChecker, key_id
from vqaserve.server.state import state

log = logging.getLogger("vqaserve.admin")

# Declares the scheme in /openapi.json; the check itself is require_admin's (auto_error would say 403).
ADMIN_KEY = HTTPBearer(scheme_name="AdminKey", auto_error=False,
                       description="an admin key (VQA_ADMIN_KEYS); API keys are not accepted here")
TURN_ON = ("set VQA_ADMIN_KEYS (or VQA_ADMIN_KEYS_FILE) on the server and send 'Authorization: Bearer "
           "<admin key>'")


async def require_admin(request: Request,
                        credentials: HTTPAuthorizationCredentials | None = Depends(ADMIN_KEY)) -> None:
    server = state(request).settings.server
    if credentials is None:  # 401 first, as for any missing credential: the message says what to set
        state_of = "is off" if not server.admin_keys else "needs an admin key"
        raise Unauthorized(f"missing admin key: the admin API {state_of}; {TURN_ON}", param="Authorization",
                           code="invalid_admin_key")
    if not server.admin_keys:
        raise Forbidden(f"the admin API is off: {TURN_ON}", code="admin_api_off")
    if server.workers > 1:
        raise Forbidden("the admin API is off with VQA_WORKERS > 1: each worker process holds its own adapters "
                        "and routes; run one worker per process (several replicas behind the balancer) and "
                        "send each admin command to every replica", code="admin_api_off")
    token = credentials.credentials
    if not KeyChecker(server.admin_keys).valid(token):
        if KeyChecker(server.api_keys).valid(token):
            raise Forbidden("an API key does not open the admin API; send an admin key (VQA_ADMIN_KEYS)",
                            param="Authorization", code="not_an_admin_key")
        raise Unauthorized("invalid admin key: check the key in 'Authorization: Bearer <admin key>' against "
                           "VQA_ADMIN_KEYS", param="Authorization", code="invalid_admin_key")
    request.state.admin_key_id = key_id(token)  # names the admin in the log lines of its changes
