from setuptools import setup

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
    packages=["explorerd", "twisted.plugins"],
    include_package_data=True,
    package_data={"explorerd": ["data/*.jsonl", "data/*.md"]},
    install_requires=[
        "twisted[tls]>=24.3",
        "autobahn>=24.4",
        "txaio>=23.1",
        "treq>=23.11",
        "prometheus-client>=0.20",
        "zope.interface>=6",
    ],
)
