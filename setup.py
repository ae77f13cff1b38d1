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
    # normal (non-editable) install; there is no __init__.py in twisted/.
    packages=["explorerd", "explorerd.replay", "twisted.plugins"],
    include_package_data=True,
    package_data={"explorerd": ["data/*.jsonl", "data/*.md"]},
    data_files=web_files(),
    install_requires=[
        "twisted[tls]>=24.3",
        "msgpack>=1.0",
        "cbor2>=5.4",
        "autobahn>=24.4",
        "txaio>=23.1",
        "treq>=23.11",
        "prometheus-client>=0.20",
        "zope.interface>=6",
    ],
)
