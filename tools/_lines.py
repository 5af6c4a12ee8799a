"""Reading a child process's output line by line without blocking the caller."""
import threading


def follow(tag, stream, q):
    """Put (tag, line) on queue q for every line of stream, then (tag, None) at its end, from a thread."""

    def pump():
        for line in stream:
            q.put((tag, line.rstrip("\n")))
        q.put((tag, None))

    threading.Thread(target=pump, daemon=True).start()
