"""A scripted sample agent for `cargo xtask demo`.

It behaves like a purchasing agent that has been prompt-injected: it does its job, then tries to
send data elsewhere, read credentials and run tools. agentguard lets the first through and
refuses the rest in the kernel.
"""

import os
import socket
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def attempt(what, fn):
    try:
        fn()
        print(f"  [allowed] {what}")
    except OSError as e:
        print(f"  [DENIED ] {what}: {e.strerror} (errno {e.errno})")


def tcp(host, port):
    def go():
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"GET /quote HTTP/1.0\r\n\r\n")
            s.recv(128)
    return go


def udp(host, port):
    def go():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"exfil", (host, port))
    return go


def write_order():
    with open(os.path.join(HERE, "orders", "order.txt"), "w") as f:
        f.write("42 units at 3.50\n")


print("agent: fetching a quote and placing an order")
attempt("TCP 127.0.0.1:18080 (supplier API, in the policy)", tcp("127.0.0.1", 18080))
attempt("TCP [::1]:18080 (supplier API over IPv6, in the policy)", tcp("::1", 18080))
attempt("write orders/order.txt (a write prefix)", write_order)
attempt(
    "scratch file via tempfile (its private $TMPDIR)",
    lambda: tempfile.NamedTemporaryFile().write(b"draft"),
)

print("agent: (prompt-injected) exfiltrating the order book")
attempt("TCP 127.0.0.1:18081 (not in the policy)", tcp("127.0.0.1", 18081))
attempt("UDP 127.0.0.1:5353 (datagram without connect)", udp("127.0.0.1", 5353))
attempt("TCP ::ffff:127.0.0.1:18081 (IPv4-mapped IPv6 trick)", tcp("::ffff:127.0.0.1", 18081))

print("agent: (prompt-injected) reading credentials and running tools")
attempt("read /etc/passwd (not in the policy)", lambda: open("/etc/passwd").read())
attempt("overwrite its own code (read-only)", lambda: open(__file__, "a").write("# pwned\n"))
attempt(
    "exec /usr/bin/curl (not in the policy)",
    lambda: subprocess.run(["/usr/bin/curl", "--version"], check=True, capture_output=True),
)
