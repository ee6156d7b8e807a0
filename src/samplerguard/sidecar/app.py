"""The sidecar's HTTP API (TCP), for the verifier.

Open (no credentials):

* ``GET /healthz``: the process is alive;
* ``GET /readyz``: runtime integrity holds (else 503 with the problems);
* ``GET /v1/public-key``: the Ed25519 key commitments are signed with, and the pod;
* ``GET /metrics``: the Prometheus exposition of the sidecar's metrics (counts, latencies,
  the RNG modes and outcomes it recorded; no request ids, tenants or secrets).

Authenticated (the verifier's bearer token):

* ``GET /v1/trajectories?after=SEQ&limit=N``: committed trajectories after a sequence number;
* ``GET /v1/seeds/abandoned?after=SEQ&limit=N``: DRBG seeds issued that never became a
  committed trajectory (see ``sidecar.abandoned``);
* ``GET /v1/trajectories/{id}``: the signed commitment (DSSE), seed escrow, quarantine reasons;
* ``GET /v1/trajectories/{id}/openings/{step}``: the opening of one step (safetensors);
* ``GET /v1/trajectories/{id}/transcript``: every leaf, z_N, the final latent and the request
  parameters (safetensors), for the tail, request and noise checks;
* ``GET /v1/integrity``: the latest runtime-integrity measurement and alerts, and the DRBG's
  state (mode, whether the mounted master secret is usable, the changes taken up).

Authenticated routes check the bearer token *before* anything else, so an unauthenticated
caller learns nothing, not even whether a trajectory exists: it gets 401 and an empty detail.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Response
from fastapi.responses import JSONResponse

from samplerguard.errors import MalformedInputError, TemporaryError
from samplerguard.kubeapi import Forbidden
from samplerguard.sidecar.auth import UnauthorizedError
from samplerguard.sidecar.service import Sidecar
from samplerguard.sidecar.store import UnknownTrajectoryError
from samplerguard.telemetry.prometheus import CONTENT_TYPE

__all__ = ["OPENING_MEDIA_TYPE", "create_app"]

log = logging.getLogger(__name__)

OPENING_MEDIA_TYPE = "application/vnd.samplerguard.opening+safetensors"
TRANSCRIPT_MEDIA_TYPE = "application/vnd.samplerguard.transcript+safetensors"
_STEP = re.compile(r"[0-9]{1,5}", re.ASCII)


def create_app(sidecar: Sidecar) -> FastAPI:
    app = FastAPI(title="samplerguard sidecar", docs_url=None, redoc_url=None, openapi_url=None)

    def authenticated(authorization: Annotated[str | None, Header()] = None) -> str:
        token = None
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        try:
            return sidecar.auth.authenticate(token)
        except UnauthorizedError:
            raise HTTPException(
                status_code=401,
                detail="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="samplerguard-sidecar"'},
            ) from None
        except TemporaryError:
            raise HTTPException(status_code=503, detail="authentication unavailable") from None
        except Forbidden as exc:
            # permanent: this pod may not review tokens (RBAC); fail closed and say so
            log.error("the verifier cannot be authenticated: %s", exc)
            raise HTTPException(
                status_code=503, detail="authentication not permitted to this sidecar"
            ) from None

    auth = [Depends(authenticated)]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        m = sidecar.integrity.current
        body = {"ready": m.ok, "problems": list(m.problems)}
        return JSONResponse(body, status_code=200 if m.ok else 503)

    @app.get("/v1/public-key")
    def public_key() -> dict[str, Any]:
        return {"publicKey": sidecar.public_pem, "keyid": sidecar.keyid, "pod": sidecar.pod}

    @app.get("/v1/trajectories", dependencies=auth)
    def trajectories(
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        entries = sidecar.store.committed(after=after, limit=limit)
        return {
            "pod": sidecar.pod,
            "keyid": sidecar.keyid,
            "trajectories": [e.summary() for e in entries],
        }

    @app.get("/v1/seeds/abandoned", dependencies=auth)
    def abandoned_seeds(
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        seeds = sidecar.gate.seeds
        if seeds is None or seeds.ledger is None:
            return {"pod": sidecar.pod, "abandoned": []}
        seeds.sweep()
        return {"pod": sidecar.pod, "abandoned": seeds.ledger.listing(after=after, limit=limit)}

    @app.get("/v1/trajectories/{trajectory_id}", dependencies=auth)
    def trajectory(trajectory_id: str) -> dict[str, Any]:
        try:
            doc = sidecar.store.index(trajectory_id)
        except (UnknownTrajectoryError, MalformedInputError):
            raise HTTPException(status_code=404, detail="no such trajectory") from None
        return {
            "id": doc["id"],
            "seq": doc["seq"],
            "committedAt": doc["committedAt"],
            "commitment": doc["envelope"],
            "quarantine": doc.get("quarantine", []),
            "seedEscrow": doc.get("seedEscrow"),
            "ticket": doc.get("ticket"),
            "steps": len(doc["steps"]),
        }

    @app.get("/v1/trajectories/{trajectory_id}/openings/{step}", dependencies=auth)
    def opening(trajectory_id: str, step: str) -> Response:
        with sidecar.service_metrics.timed(sidecar.service_metrics.openings) as outcome:
            outcome["outcome"] = "missing"
            if not _STEP.fullmatch(step):
                # ASCII digits only: str.isdigit() also takes "²" and "٣", which int() refuses
                # or reads as another step
                raise HTTPException(status_code=400, detail="step must be a non-negative integer")
            try:
                data = sidecar.store.opening_bytes(trajectory_id, int(step))
            except UnknownTrajectoryError:
                raise HTTPException(status_code=404, detail="no such trajectory") from None
            except MalformedInputError as exc:
                raise HTTPException(status_code=404, detail=str(exc)[:300]) from None
            except (OSError, KeyError, ValueError) as exc:
                log.warning("opening %s/%s could not be read: %s", trajectory_id, step, exc)
                raise HTTPException(
                    status_code=500, detail="stored opening is unreadable"
                ) from None
            outcome["outcome"] = "served"
            return Response(content=data, media_type=OPENING_MEDIA_TYPE)

    @app.get("/metrics")
    def prometheus() -> Response:
        text = sidecar.metrics.prometheus_text() if sidecar.metrics is not None else ""
        return Response(content=text, media_type=CONTENT_TYPE)

    @app.get("/v1/trajectories/{trajectory_id}/transcript", dependencies=auth)
    def transcript(trajectory_id: str) -> Response:
        try:
            data = sidecar.store.transcript_bytes(trajectory_id)
        except UnknownTrajectoryError:
            raise HTTPException(status_code=404, detail="no such trajectory") from None
        except MalformedInputError as exc:
            raise HTTPException(status_code=404, detail=str(exc)[:300]) from None
        except (OSError, KeyError, ValueError) as exc:
            log.warning("transcript %s could not be read: %s", trajectory_id, exc)
            raise HTTPException(status_code=500, detail="stored transcript is unreadable") from None
        return Response(content=data, media_type=TRANSCRIPT_MEDIA_TYPE)

    @app.get("/v1/integrity", dependencies=auth)
    def integrity() -> dict[str, Any]:
        m = sidecar.integrity.current
        return {
            "ok": m.ok,
            "measuredAt": m.at,
            "facts": m.facts(),
            "problems": list(m.problems),
            "alerts": list(sidecar.alerts),
            "policy": sidecar.policy_name,
            "drbg": sidecar.drbg_state,
        }

    return app
