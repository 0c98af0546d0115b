#!/usr/bin/env python3
"""Draws the page's app icons (www/icons/icon-{192,512}.png, icon-maskable-512.png) with the standard
library only: a white picture (sun and hills) on the page's red, with a search lens. The maskable icon keeps
everything inside the central 80 % circle that launchers may crop to."""
import math, struct, zlib, pathlib

RED, WHITE, DARK = (200, 16, 46), (255, 255, 255), (120, 10, 28)

def draw(size, safe):
    # safe: the fraction of the side the drawing may use (maskable: within the 80 % circle)
    s = size
    px = bytearray()
    c = s / 2
    half = s * safe / 2
    fx0, fy0, fx1, fy1 = c - half * 0.78, c - half * 0.62, c + half * 0.62, c + half * 0.42
    for y in range(s):
        px.append(0)  # filter byte
        for x in range(s):
            colour = RED
            if fx0 <= x <= fx1 and fy0 <= y <= fy1:
                colour = WHITE
                inner = (fx0 + s * 0.03 <= x <= fx1 - s * 0.03 and fy0 + s * 0.03 <= y <= fy1 - s * 0.03)
                if inner:
                    sun = (x - (fx0 + (fx1 - fx0) * 0.72)) ** 2 + (y - (fy0 + (fy1 - fy0) * 0.3)) ** 2 < (s * 0.05) ** 2
                    base = fy1 - s * 0.03
                    hill = y > base - (fy1 - fy0) * 0.55 * max(0.0, 1 - abs(x - (fx0 + (fx1 - fx0) * 0.35)) / ((fx1 - fx0) * 0.4))
                    colour = RED if (sun or hill) else WHITE
            lx, ly, r = c + half * 0.52, c + half * 0.50, half * 0.30
            d = math.hypot(x - lx, y - ly)
            if r * 0.72 <= d <= r:
                colour = DARK if colour == WHITE else WHITE
            hx, hy = x - lx, y - ly
            along = (hx + hy) / math.sqrt(2)
            across = abs(hx - hy) / math.sqrt(2)
            if r < along < r * 1.9 and across < r * 0.16:
                colour = WHITE
            px.extend(colour)
    def chunk(kind, data):
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', s, s, 8, 2, 0, 0, 0)) + \
        chunk(b'IDAT', zlib.compress(bytes(px), 9)) + chunk(b'IEND', b'')

out = pathlib.Path(__file__).resolve().parent.parent / 'www' / 'icons'
out.mkdir(exist_ok=True)
(out / 'icon-192.png').write_bytes(draw(192, 0.92))
(out / 'icon-512.png').write_bytes(draw(512, 0.92))
(out / 'icon-maskable-512.png').write_bytes(draw(512, 0.62))
