"""Builds the optional C kernel of the exact lazy Adam (``harness_jodie._adam_kernel``).

Without a C compiler the build is skipped with a warning and the model falls back to torch's
dense Adam over the whole static tables: the same optimizer, slower (see the JODIE docstring).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "harness_jodie._adam_kernel",
            sources=["harness_jodie/_adam_kernel.c"],
            extra_compile_args=["-O3", "-fno-math-errno", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
