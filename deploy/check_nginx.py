#!/usr/bin/env python3
"""Checks deploy/mesh/nginx-auth-request.conf with a real nginx.

1. `nginx -t` on a small wrapper nginx.conf that includes the example, unchanged, inside
   an http {} block (pid, logs and temp paths in a temporary directory).
2. A behaviour test on loopback: the same example with its ports moved to free ones,
   nginx started in the foreground, a stub of /authz/forward-auth and a stub backend
   (both nginx server blocks), and one request per outcome:
     200 -> the backend sees X-Auth-User-Id from the service, not the client's forgery,
            and no Authorization header;
     401 -> exactly one WWW-Authenticate, the service's;
     403 -> the service's insufficient_scope WWW-Authenticate;
     503 from the service -> 503 with its Retry-After (not auth_request's 500);
     502 from the service -> 500.
   nginx is stopped (by its own PID) whatever happens.

Usage: check_nginx.py [EXAMPLE]   (default: the example next to this script)
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "mesh", "nginx-auth-request.conf")

WRAPPER = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
daemon off;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {example};
{stubs}}}
"""

# A stand-in for auth-service's /authz/forward-auth, keyed on the bearer token.
STUBS = """\
    server {{
        listen 127.0.0.1:{auth_port};
        location = /authz/forward-auth {{
            if ($http_authorization = "Bearer good") {{
                add_header X-Auth-User-Id alice;
                add_header X-Auth-Token-Id 42;
                add_header X-Auth-Scopes "billing:read";
                return 200;
            }}
            if ($http_authorization = "Bearer noscope") {{
                add_header WWW-Authenticate 'Bearer error="insufficient_scope", scope="$http_x_auth_required_scope"' always;
                return 403;
            }}
            if ($http_authorization = "Bearer dbdown") {{
                add_header Retry-After 7 always;
                return 503;
            }}
            if ($http_authorization = "Bearer broken") {{
                return 502;
            }}
            add_header WWW-Authenticate 'Bearer error="invalid_token", error_description="token expired"' always;
            return 401;
        }}
    }}
    server {{
        listen 127.0.0.1:{backend_port};
        location / {{
            return 200 "user=[$http_x_auth_user_id] token=[$http_x_auth_token_id] authz=[$http_authorization]";
        }}
    }}
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_t(example, tmp):
    conf = os.path.join(tmp, "nginx-t.conf")
    with open(conf, "w") as f:
        f.write(WRAPPER.format(tmp=tmp, example=example, stubs=""))
    result = subprocess.run(["nginx", "-t", "-q", "-p", tmp, "-c", conf], capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stderr, end="")
        print(f"FAIL nginx -t on {example}")
        return False
    print(f"ok   nginx -t: {example} parses and its directives are valid")
    return True


def request(port, path, headers):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read().decode()


def behaviour(example, tmp):
    listen_port, auth_port, backend_port = free_port(), free_port(), free_port()
    with open(example) as f:
        text = f.read()
    for old, new in (("127.0.0.1:8080", f"127.0.0.1:{auth_port}"),
                     ("127.0.0.1:9000", f"127.0.0.1:{backend_port}"),
                     ("listen 8443;", f"listen 127.0.0.1:{listen_port};")):
        if old not in text:
            print(f"FAIL the example no longer contains {old!r}; update check_nginx.py")
            return False
        text = text.replace(old, new)
    moved = os.path.join(tmp, "example.conf")
    with open(moved, "w") as f:
        f.write(text)
    conf = os.path.join(tmp, "nginx-run.conf")
    with open(conf, "w") as f:
        stubs = STUBS.format(auth_port=auth_port, backend_port=backend_port)
        f.write(WRAPPER.format(tmp=tmp, example=moved, stubs=stubs))

    proc = subprocess.Popen(["nginx", "-p", tmp, "-c", conf], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", listen_port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(proc.stderr.read() if proc.poll() is not None else "", end="")
                    print("FAIL nginx did not start")
                    return False
                time.sleep(0.05)

        failures = []

        def expect(name, cond, detail):
            print(f"{'ok  ' if cond else 'FAIL'} {name}{'' if cond else ': ' + detail}")
            if not cond:
                failures.append(name)

        status, headers, body = request(listen_port, "/billing/invoices",
                                        {"Authorization": "Bearer good", "X-Auth-User-Id": "mallory"})
        expect("200: identity headers reach the backend, the client's forgery does not",
               status == 200 and "user=[alice]" in body and "token=[42]" in body,
               f"status {status}, backend saw {body!r}")
        expect("200: the token itself is not forwarded to the backend",
               "authz=[]" in body, f"backend saw {body!r}")

        status, headers, _ = request(listen_port, "/billing/invoices", {"Authorization": "Bearer expired"})
        www = headers.get_all("WWW-Authenticate") or []
        expect("401: exactly one WWW-Authenticate, the service's",
               status == 401 and www == ['Bearer error="invalid_token", error_description="token expired"'],
               f"status {status}, WWW-Authenticate {www}")

        status, headers, _ = request(listen_port, "/billing/invoices", {"Authorization": "Bearer noscope"})
        www = headers.get_all("WWW-Authenticate") or []
        expect("403: the service's insufficient_scope challenge, with the location's scope",
               status == 403 and www == ['Bearer error="insufficient_scope", scope="billing:read"'],
               f"status {status}, WWW-Authenticate {www}")

        status, headers, _ = request(listen_port, "/api/things", {"Authorization": "Bearer noscope"})
        www = headers.get_all("WWW-Authenticate") or []
        expect("/api/ sends no required scope",
               status == 403 and www == ['Bearer error="insufficient_scope", scope=""'],
               f"status {status}, WWW-Authenticate {www}")

        status, headers, _ = request(listen_port, "/billing/invoices", {"Authorization": "Bearer dbdown"})
        expect("503 from the service: 503 with its Retry-After, not auth_request's 500",
               status == 503 and headers.get("Retry-After") == "7",
               f"status {status}, Retry-After {headers.get('Retry-After')!r}")

        status, _, _ = request(listen_port, "/billing/invoices", {"Authorization": "Bearer broken"})
        expect("502 from the service: 500", status == 500, f"status {status}")
        return not failures
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful stop of the master we started
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv):
    example = os.path.abspath(argv[0]) if argv else EXAMPLE
    if shutil.which("nginx") is None:
        print("nginx is not installed", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="check-nginx-")
    try:
        # Readable by the worker processes, which drop root to `nobody`.
        os.chmod(tmp, 0o755)
        ok = nginx_t(example, tmp) and behaviour(example, tmp)
        if not ok and os.path.exists(os.path.join(tmp, "error.log")):
            with open(os.path.join(tmp, "error.log")) as f:
                print("nginx error.log:\n" + f.read())
        return 0 if ok else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
