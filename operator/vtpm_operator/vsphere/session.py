"""A vCenter session: SOAP (pyVmomi) and REST (tagging), verified TLS, renewed when it expires."""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import requests
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from vtpm_operator import metrics
from vtpm_operator.problems import PolicyProblem, ProblemReason

log = logging.getLogger(__name__)
T = TypeVar("T")

SOAP_TIMEOUT_SECONDS = 60
REST_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Endpoint:
    server: str  # host or host:port
    ca_pem: str | None = None  # CA that signs vCenter's certificate; None: the system's CAs
    insecure_skip_verify: bool = False

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.server.rpartition(":") if ":" in self.server else (self.server, "", "443")
        return host, int(port)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)  # never in logs, events or status


class VCenterSession:
    """One logged-in client per (vCenter, account); sessions are reused across syncs.

    Every call goes through `soap` or `rest`, which renew an expired session once and turn
    connection failures into PolicyProblems with the documented reasons.
    """

    def __init__(self, endpoint: Endpoint, credentials: Credentials) -> None:
        self.endpoint = endpoint
        self.credentials = credentials
        self._lock = threading.Lock()
        self._si: Any = None
        self._service_content: Any = None  # fetched once per login: it only holds references
        self._rest = requests.Session()
        self._rest_token: str | None = None
        self._ca_file: str | None = None

    # --- SOAP -------------------------------------------------------------------------------
    def soap(self, operation: str, call: Callable[[Any], T], *, idempotent: bool = True) -> T:
        """Run call(service_content), logging in first if needed and once more if the session expired.

        A read that meets a dropped connection (a vCenter restart leaves dead pooled connections)
        is tried once more on a fresh one; a change is not, since vCenter may have received it.
        """
        for attempt in (1, 2):
            content = self._content()
            try:
                result = call(content)
            except vim.fault.NotAuthenticated:
                metrics.count_vcenter_request(operation, "session_expired")
                self._drop_soap()
                if attempt == 2:
                    raise PolicyProblem(
                        ProblemReason.AUTHENTICATION_FAILED, "vCenter rejected a fresh session"
                    ) from None
                continue
            except (OSError, http.client.HTTPException) as error:
                metrics.count_vcenter_request(operation, "unreachable")
                self._drop_soap()
                if idempotent and attempt == 1:
                    continue
                raise PolicyProblem(
                    ProblemReason.VCENTER_UNREACHABLE,
                    f"lost the connection to {self.endpoint.server}: {error}",
                ) from error
            except vmodl.MethodFault:
                metrics.count_vcenter_request(operation, "fault")
                raise
            metrics.count_vcenter_request(operation, "success")
            return result
        raise AssertionError("unreachable")

    def _content(self) -> Any:
        with self._lock:
            if self._si is None:
                self._si, self._service_content = self._login()
            return self._service_content

    def _login(self) -> tuple[Any, Any]:
        host, port = self.endpoint.host_port
        context = self._ssl_context()
        try:
            si = SmartConnect(
                host=host,
                port=port,
                user=self.credentials.username,
                pwd=self.credentials.password,
                sslContext=context,
                httpConnectionTimeout=SOAP_TIMEOUT_SECONDS,
            )
        except vim.fault.InvalidLogin:
            metrics.count_vcenter_request("Login", "fault")
            raise PolicyProblem(
                ProblemReason.AUTHENTICATION_FAILED,
                f"vCenter {self.endpoint.server} refused the credentials of {self.credentials.username}",
            ) from None
        except ssl.SSLCertVerificationError as error:
            metrics.count_vcenter_request("Login", "tls_error")
            raise PolicyProblem(
                ProblemReason.CERTIFICATE_NOT_TRUSTED,
                f"the certificate of {self.endpoint.server} is not trusted ({error.verify_message}); "
                "set spec.vcenter.caSecret to the CA that signs it",
            ) from None
        except (OSError, http.client.HTTPException) as error:
            metrics.count_vcenter_request("Login", "unreachable")
            raise PolicyProblem(
                ProblemReason.VCENTER_UNREACHABLE, f"cannot reach {self.endpoint.server}: {error}"
            ) from None
        except Exception as error:  # pyVmomi's own "is down or is not a VIM server"
            metrics.count_vcenter_request("Login", "unreachable")
            raise PolicyProblem(ProblemReason.VCENTER_UNREACHABLE, str(error)) from None
        metrics.count_vcenter_request("Login", "success")
        content = si.RetrieveContent()
        api_type = content.about.apiType
        if api_type != "VirtualCenter":
            Disconnect(si)
            raise PolicyProblem(
                ProblemReason.NOT_VCENTER,
                f"{self.endpoint.server} is {api_type}, not vCenter: vTPM needs vCenter's key providers",
            )
        log.info("logged in to %s as %s", self.endpoint.server, self.credentials.username)
        return si, content

    def _drop_soap(self) -> None:
        with self._lock:
            si, self._si = self._si, None
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
                metrics.count_vcenter_request(operation, "unreachable")
                raise PolicyProblem(
                    ProblemReason.VCENTER_UNREACHABLE, f"cannot reach {self.endpoint.server}: {error}"
                ) from None
            if response.status_code == 401 and attempt == 1:
                metrics.count_vcenter_request(operation, "session_expired")
                self._rest_token = None
                continue
            if not response.ok:
                metrics.count_vcenter_request(operation, "fault")
                raise RestError(response.status_code, path, response.text[:300])
            metrics.count_vcenter_request(operation, "success")
            return response.json().get("value") if response.content else None
        raise PolicyProblem(ProblemReason.AUTHENTICATION_FAILED, "vCenter rejected a fresh REST session")

    def _rest_login(self) -> str:
        with self._lock:
            if self._rest_token is not None:
                return self._rest_token
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
                    f"the certificate of {self.endpoint.server} is not trusted; set spec.vcenter.caSecret",
                ) from None
            except requests.RequestException as error:
                raise PolicyProblem(
                    ProblemReason.VCENTER_UNREACHABLE, f"cannot reach {self.endpoint.server}: {error}"
                ) from None
            if response.status_code in (401, 403):
                metrics.count_vcenter_request("RestLogin", "fault")
                raise PolicyProblem(
                    ProblemReason.AUTHENTICATION_FAILED,
                    f"vCenter {self.endpoint.server} refused the credentials of {self.credentials.username}",
                )
            if not response.ok:
                metrics.count_vcenter_request("RestLogin", "fault")
                raise PolicyProblem(
                    ProblemReason.VCENTER_ERROR, f"REST login answered HTTP {response.status_code}"
                )
            metrics.count_vcenter_request("RestLogin", "success")
            self._rest_token = str(response.json()["value"])
            return self._rest_token

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
                f"the CA in spec.vcenter.caSecret is not a PEM certificate: {error}",
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


class RestError(Exception):
    def __init__(self, status: int, path: str, text: str) -> None:
        super().__init__(f"HTTP {status} from {path}: {text}")
        self.status = status
