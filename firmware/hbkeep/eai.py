# getaddrinfo's failures by name, for `resolve_failed error=` lines: EAI_NONAME rather than -2 or 200.
# Loaded by compat.resolve_error_name at the first failed lookup only, so that a device whose server name
# resolves does not carry the table.
from .compat import errno_name

# getaddrinfo's failures by number: glibc's (negative; CPython's socket.gaierror and the MicroPython unix
# port's "[addrinfo error N]"; rp2's OSError(-2) for a lookup lwIP's resolver gave up on lands on
# EAI_NONAME too) and lwIP's netdb.h (from 200: positive as lwIP defines them, negative as the esp32 port
# raises them -- it negates lwip_getaddrinfo's answer, EAI_FAIL for any failed query).
_EAI = {
    -1: "EAI_BADFLAGS", -2: "EAI_NONAME", -3: "EAI_AGAIN", -4: "EAI_FAIL", -5: "EAI_NODATA",
    -6: "EAI_FAMILY", -7: "EAI_SOCKTYPE", -8: "EAI_SERVICE", -9: "EAI_ADDRFAMILY", -10: "EAI_MEMORY",
    -11: "EAI_SYSTEM", -12: "EAI_OVERFLOW",
    200: "EAI_NONAME", 201: "EAI_SERVICE", 202: "EAI_FAIL", 203: "EAI_MEMORY", 204: "EAI_FAMILY",
    210: "EAI_NONAME", 211: "EAI_NODATA", 212: "EAI_FAIL", 213: "EAI_AGAIN",
}


def name(e):
    n = e.args[0] if e.args else 0
    if isinstance(n, str):
        # MicroPython: OSError("[addrinfo error -2]")
        digits = n.strip("[]").split(" ")[-1]
        try:
            n = int(digits)
        except ValueError:
            return "EAI_FAIL"
    if n in _EAI:
        return _EAI[n]
    if -n in _EAI and n <= -200:  # esp32: lwIP's number, negated
        return _EAI[-n]
    return errno_name(e) if isinstance(e.args[0] if e.args else 0, int) else "EAI_%d" % n


