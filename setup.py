import os

from setuptools import setup


def web_files():
    """The dashboard in web/, installed to <prefix>/share/explorerd/web (explorerd.web finds it there)."""
    out = []
    for folder, _, files in os.walk("web"):
        if files and "screenshots" not in folder.split(os.sep):
            out.append((os.path.join("share", "explorerd", folder), [os.path.join(folder, f) for f in files]))
    return out


setup(
    name="explorerd",
    version="0.1.0",
    description="Real-time block and transaction stream for Ethereum-compatible chains",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # twisted.plugins is listed explicitly so twistd finds the plugin in a
    # normal install; there is no __init__.py in twisted/ or twisted/plugins/.
    packages=["explorerd", "explorerd.data", "explorerd.replay", "twisted.plugins"],
    # Twisted looks for plugins in the twisted/plugins/ folder of every
    # sys.path entry (twisted.plugin.pluginPackagePaths).  With the layout
    # spelled out as "everything under ." an editable install (pip install -e .)
    # puts this folder on sys.path through a .pth file, as for a src/ layout;
    # without it setuptools installs an import hook that maps the packages by
    # name, and twistd never sees twisted/plugins/explorerd_plugin.py
    # ("Unknown command: explorerd").
    package_dir={"": "."},
    include_package_data=True,
    package_data={"explorerd.data": ["*.jsonl", "*.md"]},
    data_files=web_files(),
    install_requires=[
        # Upper bounds: explorerd relies on some of Twisted's and Autobahn's
        # internals (listed, and checked, in tests/test_internals.py); a new
        # major version is taken only once those tests pass against it.
        "twisted[tls]>=24.3,<27",
        "msgpack>=1.0",
        "cbor2>=5.4",
        "autobahn>=24.4,<27",
        "txaio>=23.1",
        "treq>=23.11",
        "prometheus-client>=0.20",
        "zope.interface>=6",
    ],
)
