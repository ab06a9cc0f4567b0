"""W3's client side "ours": ``download_files`` of a file and its ``.checksum`` in a fresh process.

``python benchmarks/w3_ours.py SERVER SAVEDIR URL...`` imports `CasdaClass` (the start-up is
part of what W3 times), downloads ``URL...`` into ``SAVEDIR`` with the defaults, and prints
its peak resident memory (VmHWM, MB) as the last line.  Run as a script, so that nothing of
the benchmark package is imported besides what the user's own script would import.
"""
import sys

from astroquery_casda_ext import CasdaClass


def peak_rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


if __name__ == "__main__":
    server, savedir, *urls = sys.argv[1:]
    CasdaClass(server=server).download_files(urls, savedir=savedir, progress=False)
    print(f"{peak_rss_mb():.1f}")
