# syntax=docker/dockerfile:1
# mailflow-probe: the daemon's image. Two stages: wheels are built in the first and installed into a
# virtual environment at /opt/venv; the second copies only that venv onto a fresh base.
#
# BASE_IMAGE must provide python3 (>= 3.11) with the venv module: the official python:3.11-slim-bookworm
# does, and so does a Debian bookworm with python3 and python3-venv (scripts/build-image makes one with
# debootstrap). Nothing below assumes /usr/local/bin/python: only `python3` on PATH. The build context
# leaves out the lab (.dockerignore): the image holds only the probe.
ARG BASE_IMAGE=python:3.11-slim-bookworm
# The second stage's base; by default the same. It needs python3 only (scripts/build-image passes one without
# the venv module's wheels).
ARG RUNTIME_IMAGE=${BASE_IMAGE}

FROM ${BASE_IMAGE} AS builder
# pip reads these: by default it uses its index; an offline build passes a wheelhouse instead, e.g.
#   --volume "$PWD/wheelhouse:/wheelhouse:ro" --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse
ARG PIP_NO_INDEX=0
ARG PIP_FIND_LINKS=/wheelhouse
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY probe ./probe
# Wheels for the package and every dependency, then an install from those wheels alone; pip and setuptools
# leave the venv afterwards (nothing imports them at run time: 25 MB less in the image), and so do the C and
# Cython sources and headers that lxml and others ship (2 MB).
RUN /opt/venv/bin/python3 -m pip wheel --no-cache-dir --wheel-dir /wheels . \
 && /opt/venv/bin/python3 -m pip install --no-cache-dir --no-index --find-links /wheels /wheels/*.whl \
 && /opt/venv/bin/python3 -m pip uninstall --yes --quiet pip setuptools \
 && find /opt/venv \( -name '*.c' -o -name '*.h' -o -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' \) -delete \
 && /opt/venv/bin/mailflow-probe --version

FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="mailflow-probe" \
      org.opencontainers.image.description="Cross-forest mail flow probing through each smart host, confirmed over EWS, exported to Prometheus" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 mailflow \
 && useradd --system --uid 10001 --gid mailflow --no-create-home --home-dir /var/lib/mailflow-probe \
      --shell /usr/sbin/nologin mailflow \
 && mkdir -p /etc/mailflow-probe /var/lib/mailflow-probe \
 && chown mailflow:mailflow /var/lib/mailflow-probe \
 && chmod 0750 /var/lib/mailflow-probe
COPY --from=builder /opt/venv /opt/venv
USER 10001:10001
WORKDIR /var/lib/mailflow-probe
VOLUME ["/etc/mailflow-probe", "/var/lib/mailflow-probe"]
EXPOSE 9425
# No curl in a slim base: ask /-/healthy with the standard library, with a timeout.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python3", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:9425/-/healthy', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["mailflow-probe"]
CMD ["run", "--config.file", "/etc/mailflow-probe/config.yaml", "--web.listen-address", ":9425"]
