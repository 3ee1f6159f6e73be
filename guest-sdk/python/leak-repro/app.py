import sys
import wit_world
from wit_world.imports import sink, stdout


class WitWorld(wit_world.WitWorld):
    def run(self, kind: int, n: int, size: int) -> None:
        data = b"x" * size
        if kind == 0:
            for _ in range(n):
                sink.put(data)
        elif kind == 1:
            ba = bytearray(data)
            for _ in range(n):
                sink.put(ba)
        elif kind == 2:
            mv = memoryview(data)
            for _ in range(n):
                sink.put(mv)
        elif kind == 3:
            q = size // 4
            parts = [data[:q]] * 4
            for _ in range(n):
                sink.put_many(parts)
        elif kind == 4:
            s = "x" * size
            for _ in range(n):
                sink.put_str(s)
        elif kind == 5:
            s = "x" * size
            for _ in range(n):
                sys.stdout.write(s)
                sys.stdout.flush()
        elif kind == 6:
            out = stdout.get_stdout()
            chunk = data[:4096]
            for _ in range(n):
                for off in range(0, size, 4096):
                    out.blocking_write_and_flush(chunk)
        else:
            raise ValueError(kind)

    def headroom(self) -> int:
        held = []
        try:
            while True:
                held.append(bytearray(65536))
        except MemoryError:
            pass
        total = len(held) * 65536
        del held
        return total
