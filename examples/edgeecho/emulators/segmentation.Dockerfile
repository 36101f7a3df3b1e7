# edgeECHO segmentation emulator: a static binary and busybox (cat, sh for readiness checks).
# Build context: this folder, after ./build.sh.
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
COPY edgeecho /bin/edgeecho
ENV PATH=/bin
ENTRYPOINT ["/bin/edgeecho", "segmentation"]
