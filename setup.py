"""The one compiled module (async_chat/_binary_call.pyx), built when it can be and skipped when it cannot.

Everything else is in pyproject.toml. Without Cython or a C compiler the package installs all the same and
decodes in pure Python (codec.py), a little slower; the server says which as it starts (`decoder=`).
"""

from setuptools import Extension, setup

try:
    from Cython.Build import cythonize
except ImportError:  # no Cython: pure Python
    extensions = []
else:
    extensions = cythonize(
        [Extension("async_chat._binary_call", ["async_chat/_binary_call.pyx"])],
        compiler_directives={"language_level": "3"},
        quiet=True,
    )
    for extension in extensions:
        extension.optional = True  # a failed compile is a warning, and the install goes on (cythonize drops it)

setup(ext_modules=extensions)
