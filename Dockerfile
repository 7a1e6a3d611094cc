# The sandbox image: a Python interpreter and the runner's folder, sandbox/runner, nothing else (see
# sandbox/README.md).
#
#   With a registry:  docker build --target sandbox -t sca-sandbox:latest .
#   Offline:          python -m sandbox.image build
#                     (imports this machine's Python as sca-python-base:<version>, then builds this
#                     same target with --build-arg PYTHON_BASE=sca-python-base:<version>)
#
# Keep `sandbox` the first stage: the classic builder builds every stage before its target.
ARG PYTHON_BASE=python:3.11-slim

FROM ${PYTHON_BASE} AS sandbox
COPY sandbox/runner /opt/sca/runner
ENV PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8
WORKDIR /tmp
# Run as nobody; the Sandbox also starts each container read-only, without network or capabilities.
USER 65534:65534
ENTRYPOINT ["python3", "-I", "-S", "-B", "-u", "/opt/sca/runner"]
