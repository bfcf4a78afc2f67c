"""Which redirects the client follows, and where it refuses.

httpx would follow any redirect on its own; here each hop is judged first. An API POST carries
the key, so it goes on only to https on the endpoint's own domain or to loopback, and only
with a redirect that keeps the method (307/308). A download carries no key, but may only lead
to http(s): httpx would try a `file:` or `ftp:` hop and fail with an error that reads as a
network hiccup, and a paid job would be retried for ever.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator

import httpx

from avatarbatch.errors import ApiError, RejectedError
from avatarbatch.runware.connection import USER_AGENT
from avatarbatch.runware.protocol import clip

WEB_SCHEMES = ("http", "https")
#: Redirects of an API POST that keep its method and body (RFC 9110 15.4.8-9); 301, 302 and
#: 303 let clients turn a POST into a GET, which is never what the API wants.
BODY_KEEPING_REDIRECTS = frozenset({307, 308})
METHOD_CHANGING_REDIRECTS = frozenset({301, 302, 303})
MAX_API_REDIRECTS = 5
#: The code of our own refusal to follow a redirect of the API endpoint.
REDIRECT_REFUSED = "redirectRefused"
#: A URL named in a message is clipped to this many characters.
PLACE_CLIP = 120


def api_redirect(response: httpx.Response) -> httpx.URL | None:
    """Where a redirect of an API POST leads, if it is one to follow; None if no redirect.

    Raises RejectedError for a redirect that must not be followed. Messages name the target
    by scheme, host and path only: its query could carry someone's credentials.
    """
    status = response.status_code
    location = response.headers.get("location")
    if status not in BODY_KEEPING_REDIRECTS | METHOD_CHANGING_REDIRECTS or not location:
        return None
    try:
        target = response.request.url.join(location)
    except httpx.InvalidURL:
        raise RejectedError(
            f"Runware's endpoint redirected (HTTP {status}) to an invalid address",
            status=status,
            code=REDIRECT_REFUSED,
        ) from None
    if status in METHOD_CHANGING_REDIRECTS:
        raise RejectedError(
            f"Runware's endpoint answered HTTP {status}, a redirect to {place(target)} that "
            "would turn the POST into a GET; set RUNWARE_API_URL to that address",
            status=status,
            code=REDIRECT_REFUSED,
        )
    if _is_loopback(target.host) or (
        target.scheme == "https" and _same_site(target.host, response.request.url.host)
    ):
        return target
    raise RejectedError(
        f"Runware's endpoint redirected (HTTP {status}) to {place(target)}, which is neither "
        "https on the endpoint's own domain nor a loopback address; not followed, since the "
        "API key would go along",
        status=status,
        code=REDIRECT_REFUSED,
    )


def too_many_api_redirects(last: httpx.URL) -> RejectedError:
    return RejectedError(
        f"Runware's endpoint redirected more than {MAX_API_REDIRECTS} times "
        f"(last to {place(last)}); set RUNWARE_API_URL to where it leads",
        code=REDIRECT_REFUSED,
    )


def refuses_request(error: ApiError) -> bool:
    """Whether an error that names none of our tasks refuses the request as it was built
    (a 4xx, or an error inside an answer), rather than the endpoint (a redirect)."""
    if error.code == REDIRECT_REFUSED:
        return False
    return error.status is None or 400 <= error.status < 500


@contextlib.asynccontextmanager
async def followed(client: httpx.AsyncClient, url: str) -> AsyncIterator[httpx.Response]:
    """The streamed answer to a GET of `url` after its redirects, which are followed by hand.

    A non-http(s) hop (file:, ftp:) is a RejectedError, and nothing is ever asked of such an
    address. An address httpx cannot even parse (`data:...` as a Location) raised InvalidURL,
    no httpx error at all, which surfaced as a crash: it is a RejectedError too.
    """
    try:
        request = client.build_request("GET", url, headers={"User-Agent": USER_AGENT})
    except httpx.InvalidURL as exc:
        raise RejectedError(f"download of {url} is not a valid address") from exc
    for hop in range(client.max_redirects + 1):
        if request.url.scheme not in WEB_SCHEMES:
            how = "redirected to a non-http(s) address" if hop else "is not an http(s) address"
            raise RejectedError(f"download of {url} {how}")
        try:
            # Even without following, send() works out the next request of a redirect.
            response = await client.send(request, stream=True, follow_redirects=False)
        except httpx.InvalidURL as exc:
            raise RejectedError(f"download of {url} redirected to an invalid address") from exc
        try:
            if response.next_request is None:
                yield response
                return
            request = response.next_request
        finally:
            await response.aclose()
    raise httpx.TooManyRedirects("Exceeded maximum allowed redirects.", request=request)


def place(url: httpx.URL) -> str:
    """`scheme://host:port/path` of a URL: no user info, query or fragment."""
    port = f":{url.port}" if url.port is not None else ""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return clip(f"{url.scheme}://{host}{port}{url.path}", PLACE_CLIP)


def _same_site(host: str, origin: str) -> bool:
    """The same host, or one under the same domain (api.runware.ai -> eu.api.runware.ai):
    the key goes along with a redirect, so never to someone else's server."""
    domain = ".".join(origin.lower().rstrip(".").split(".")[-2:])
    host = host.lower().rstrip(".")
    return host == domain or host.endswith("." + domain)


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
