#!/usr/bin/env python3
"""numpy baseline for `cargo bench -p edge-agent --bench features`: the same 12 features on the
same windows (raw f64 file: windows x channels x points). Prints JSON {seconds, checksum}."""
import json
import sys
import time

import numpy as np

path, n_win, n_ch, n_pts, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
data = np.fromfile(path, dtype="<f8").reshape(n_win, n_ch, n_pts)
hann = np.hanning(n_pts)
freqs = np.arange(n_pts // 2 + 1) * rate / n_pts
band = (freqs >= 0.5) & (freqs < 5.0)
t = np.arange(n_pts) / rate
tc = t - t.mean()


def features(w):
    temp, vib, cur = w[0], w[1], w[2]
    d = vib - vib.mean()
    m2 = (d * d).mean()
    rms = np.sqrt((vib * vib).mean())
    spec = np.fft.rfft((vib - vib.mean()) * hann)
    dc = cur - cur.mean()
    m2c = (dc * dc).mean()
    return [
        temp.mean(),
        (tc * (temp - temp.mean())).sum() / (tc * tc).sum(),
        temp.std(),
        np.quantile(temp, 0.9),
        rms,
        (d ** 4).mean() / (m2 * m2) - 3 if m2 else 0.0,
        np.abs(vib).max() / rms if rms else 0.0,
        (np.abs(spec[band]) ** 2).sum() / n_pts,
        cur.mean(),
        cur.max() - cur.min(),
        np.count_nonzero(np.diff(dc >= 0)) / (n_pts - 1),
        (dc ** 3).mean() / m2c ** 1.5 if m2c else 0.0,
    ]


features(data[0])
best = None
for _ in range(3):
    t0 = time.perf_counter()
    out = [features(w) for w in data]
    dt = time.perf_counter() - t0
    best = dt if best is None else min(best, dt)
print(json.dumps({"seconds": best, "checksum": float(np.sum(out))}))
