"""A vCenter session: SOAP (pyVmomi) and REST (tagging), verified TLS, renewed when it expires."""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from pyVim.connect import Disconnect, SmartStubAdapter
from pyVmomi import vim, vmodl

from vtpm_operator import metrics
from vtpm_operator.connection import Credentials, Endpoint
from vtpm_operator.facts import About
from vtpm_operator.problems import PolicyProblem, ProblemReason

log = logging.getLogger(__name__)
T = TypeVar("T")

SOAP_TIMEOUT_SECONDS = 60
REST_TIMEOUT_SECONDS = 30


class VCenterSession:
    """One logged-in client per (vCenter, account); sessions are reused across syncs.

    Every call goes through `soap` or `rest`, which renew an expired session once and turn
    connection failures into PolicyProblems with the documented reasons.
    """

    def __init__(self, endpoint: Endpoint, credentials: Credentials, label: str = "") -> None:
        self.label = label or endpoint.server  # the VCenter object's name, for metrics
        self.logins = 0
        # Bumped whenever the SOAP session changes (dropped, or a new login): objects made in the
        # session (collectors, filters) belong to one generation and die with it.
        self.generation = 0
        self._probed: tuple[Any, Any, About] | None = None
        self.endpoint = endpoint
        self.credentials = credentials
        self._lock = threading.Lock()
        self._si: Any = None
        self._service_content: Any = None  # fetched once per login: it only holds references
        self._rest = requests.Session()
        self._rest_token: str | None = None
        self._ca_file: str | None = None

    # --- SOAP -------------------------------------------------------------------------------
    def soap(
        self,
        operation: str,
        call: Callable[[Any], T],
        *,
        idempotent: bool = True,
        bound_to: int | None = None,
    ) -> T:
        """Run call(service_content), logging in first if needed and once more if the session expired.

        A read that meets a dropped connection (a vCenter restart leaves dead pooled connections)
        is tried once more on a fresh one; a change is not, since vCenter may have received it.
        A call on an object of a session (a property collector, made at `generation` `bound_to`)
        is made only in that session: once it has expired or been replaced, the call raises
        SessionRenewed, for the caller to make its objects anew. Never tried on a fresh session,
        it can never fail there and drop that one too.
        """
        for attempt in (1, 2):
            content, generation = self._content()
            if bound_to is not None and bound_to != generation:  # read with the content: one session
                raise SessionRenewed(operation)
            started = time.monotonic()
            try:
                result = call(content)
            except vim.fault.NotAuthenticated:
                self._count(operation, "session_expired", started)
                self._drop_soap(generation)
                if bound_to is not None:
                    raise SessionRenewed(operation) from None
                if attempt == 2:
                    raise PolicyProblem(
                        ProblemReason.AUTHENTICATION_FAILED, "vCenter rejected a fresh session"
                    ) from None
                continue
            except (OSError, http.client.HTTPException) as error:
                self._count(operation, "unreachable", started)
                self._drop_soap(generation)
                if idempotent and attempt == 1:
                    continue
                raise PolicyProblem(
                    ProblemReason.VCENTER_UNREACHABLE,
                    f"lost the connection to {self.endpoint.server}: {error}",
                ) from error
            except vmodl.MethodFault:
                self._count(operation, "fault", started)
                raise
            self._count(operation, "success", started)
            return result
        raise AssertionError("unreachable")

    def _content(self) -> tuple[Any, int]:
        """The service content of the current session (logging in first if there is none), and
        the session's generation."""
        with self._lock:
            if self._si is None:
                self._si, self._service_content = self._login()
            return self._service_content, self.generation

    def probe(self) -> About:
        """vCenter's identity from the anonymous RetrieveServiceContent, over verified TLS: no credentials
        leave before the server has shown it is a vCenter."""
        host, port = self.endpoint.host_port
        started = time.monotonic()
        try:
            stub = SmartStubAdapter(
                host=host,
                port=port,
                sslContext=self._ssl_context(),
                httpConnectionTimeout=SOAP_TIMEOUT_SECONDS,
            )
            content = vim.ServiceInstance("ServiceInstance", stub).RetrieveContent()
        except ssl.SSLCertVerificationError as error:
            self._count("RetrieveServiceContent", "tls_error", started)
            raise PolicyProblem(
                ProblemReason.CERTIFICATE_NOT_TRUSTED,
                f"the certificate of {self.endpoint.server} is not trusted ({error.verify_message}); "
                "set caSecretRef to the CA that signs it",
            ) from None
        except (OSError, http.client.HTTPException) as error:
            self._count("RetrieveServiceContent", "unreachable", started)
            raise PolicyProblem(
                ProblemReason.VCENTER_UNREACHABLE, f"cannot reach {self.endpoint.server}: {error}"
            ) from None
        except Exception as error:  # pyVmomi's "is not a VIM server", or a reply that is no SOAP at all
            self._count("RetrieveServiceContent", "fault", started)
            raise PolicyProblem(
                ProblemReason.NOT_VCENTER,
                f"{self.endpoint.server} does not answer as vSphere ({type(error).__name__}); "
                "no credentials were sent",
            ) from None
        self._count("RetrieveServiceContent", "success", started)
        about = content.about
        facts = About(
            api_type=str(about.apiType or ""),
            instance_uuid=str(about.instanceUuid or ""),
            version=str(about.version or ""),
            build=str(about.build or ""),
        )
        if facts.api_type != "VirtualCenter":
            raise PolicyProblem(
                ProblemReason.NOT_VCENTER,
                f"{self.endpoint.server} is {facts.api_type or 'not vSphere'}, not vCenter: vTPM needs "
                "vCenter's key providers; no credentials were sent",
            )
        self._probed = (stub, content, facts)
        return facts

    def _login(self) -> tuple[Any, Any]:
        if self._probed is None:
            self.probe()
        assert self._probed is not None
        stub, content, _ = self._probed
        self._probed = None  # a session is bound to its stub: the next login probes again
        started = time.monotonic()
        try:
            content.sessionManager.Login(self.credentials.username, self.credentials.password)
        except vim.fault.InvalidLogin:
            self._count("Login", "fault", started)
            raise PolicyProblem(
                ProblemReason.AUTHENTICATION_FAILED,
                f"vCenter {self.endpoint.server} refused the credentials of {self.credentials.username}",
            ) from None
        except (OSError, http.client.HTTPException) as error:
            self._count("Login", "unreachable", started)
            raise PolicyProblem(
                ProblemReason.VCENTER_UNREACHABLE, f"cannot reach {self.endpoint.server}: {error}"
            ) from None
        self._count("Login", "success", started)
        self.logins += 1
        self.generation += 1
        log.info("logged in to %s as %s", self.endpoint.server, self.credentials.username)
        return vim.ServiceInstance("ServiceInstance", stub), content

    def _drop_soap(self, generation: int) -> None:
        """Drop the session of `generation`, the one a call failed in. Calls in other threads
        (a page asked ahead, the privileges beside the other reads) may meet the same failure: a
        session another of them has made since is kept, not dropped in turn."""
        with self._lock:
            if generation != self.generation:
                return
            si, self._si = self._si, None
            self.generation += 1
        if si is not None:
            try:  # free the session on vCenter's side when it still exists
                Disconnect(si)
            except Exception:
                log.debug("logout of a dropped session failed", exc_info=True)

    # --- REST -------------------------------------------------------------------------------
    def rest(self, operation: str, method: str, path: str, body: Any = None) -> Any:
        """The "value" of a vCenter REST (/rest) call, with a session token renewed on 401."""
        for attempt in (1, 2):
            token = self._rest_login()
            started = time.monotonic()
            try:
                response = self._rest.request(
                    method,
                    f"https://{self.endpoint.server}{path}",
                    json=body,
                    headers={"vmware-api-session-id": token},
                    verify=self._requests_verify(),
                    timeout=REST_TIMEOUT_SECONDS,
                )
            except requests.RequestException as error:
                self._count(operation, "unreachable", started)
                raise PolicyProblem(
                    ProblemReason.VCENTER_UNREACHABLE, f"cannot reach {self.endpoint.server}: {error}"
                ) from None
            if response.status_code == 401 and attempt == 1:
                self._count(operation, "session_expired", started)
                self._rest_token = None
                self._rest.cookies.clear()  # the dead token rides in a cookie too: a login sending it fails
                continue
            if not response.ok:
                self._count(operation, "fault", started)
                raise RestError(response.status_code, path, response.text[:300])
            self._count(operation, "success", started)
            return response.json().get("value") if response.content else None
        raise PolicyProblem(ProblemReason.AUTHENTICATION_FAILED, "vCenter rejected a fresh REST session")

    def _rest_login(self) -> str:
        self._content()  # SOAP first: it proves the server is a vCenter before REST sends a password
        with self._lock:
            if self._rest_token is not None:
                return self._rest_token
            started = time.monotonic()
            try:
                response = self._rest.post(
                    f"https://{self.endpoint.server}/rest/com/vmware/cis/session",
                    auth=(self.credentials.username, self.credentials.password),
                    verify=self._requests_verify(),
                    timeout=REST_TIMEOUT_SECONDS,
                )
            except requests.exceptions.SSLError:
                raise PolicyProblem(
                    ProblemReason.CERTIFICATE_NOT_TRUSTED,
                    f"the certificate of {self.endpoint.server} is not trusted; set caSecretRef",
                ) from None
            except requests.RequestException as error:
                raise PolicyProblem(
                    ProblemReason.VCENTER_UNREACHABLE, f"cannot reach {self.endpoint.server}: {error}"
                ) from None
            if response.status_code in (401, 403):
                self._count("RestLogin", "fault", started)
                raise PolicyProblem(
                    ProblemReason.AUTHENTICATION_FAILED,
                    f"vCenter {self.endpoint.server} refused the credentials of {self.credentials.username}",
                )
            if not response.ok:
                self._count("RestLogin", "fault", started)
                raise PolicyProblem(
                    ProblemReason.VCENTER_ERROR, f"REST login answered HTTP {response.status_code}"
                )
            self._count("RestLogin", "success", started)
            self._rest_token = str(response.json()["value"])
            return self._rest_token

    def _count(self, operation: str, outcome: str, started: float) -> None:
        metrics.observe_vcenter_call(self.label, operation, outcome, time.monotonic() - started)

    # --- TLS --------------------------------------------------------------------------------
    def _ssl_context(self) -> ssl.SSLContext:
        if self.endpoint.insecure_skip_verify:
            return ssl._create_unverified_context()  # only on the policy's explicit request
        if not self.endpoint.ca_pem:
            return ssl.create_default_context()
        try:
            return ssl.create_default_context(cadata=self.endpoint.ca_pem)
        except ssl.SSLError as error:
            raise PolicyProblem(
                ProblemReason.CERTIFICATE_NOT_TRUSTED,
                f"the CA in caSecretRef is not a PEM certificate: {error}",
            ) from None

    def _requests_verify(self) -> bool | str:
        if self.endpoint.insecure_skip_verify:
            return False
        if not self.endpoint.ca_pem:
            return True
        if self._ca_file is None:
            handle, self._ca_file = tempfile.mkstemp(prefix="vtpm-ca-", suffix=".pem")
            with os.fdopen(handle, "w") as ca_file:
                ca_file.write(self.endpoint.ca_pem)
        return self._ca_file

    def close(self) -> None:
        with self._lock:
            if self._si is not None:
                try:
                    Disconnect(self._si)
                except Exception:  # logging out of a vCenter that is gone is not worth a failure
                    log.debug("logout failed", exc_info=True)
                self._si = None
            if self._rest_token is not None:
                try:
                    self._rest.delete(
                        f"https://{self.endpoint.server}/rest/com/vmware/cis/session",
                        headers={"vmware-api-session-id": self._rest_token},
                        verify=self._requests_verify(),
                        timeout=5,
                    )
                except requests.RequestException:
                    log.debug("REST logout failed", exc_info=True)
                self._rest_token = None
        self._rest.close()
        if self._ca_file:
            os.unlink(self._ca_file)
            self._ca_file = None


class SessionRenewed(Exception):
    """The session expired under a call bound to it; the next call logs in anew."""


class RestError(Exception):
    def __init__(self, status: int, path: str, text: str) -> None:
        super().__init__(f"HTTP {status} from {path}: {text}")
        self.status = status
