"""The contracts between parts hold for the real parts and for the test fakes."""

import pytest
from prometheus_client import CollectorRegistry
from twisted.internet.task import Clock
from zope.interface.verify import verifyClass, verifyObject

from explorerd.config import Config
from explorerd.hub import Hub
from explorerd.interfaces import IBlockSink, IPublicationObserver, IResumeHint
from explorerd.livetail import LiveTail
from explorerd.metrics import Metrics
from explorerd.rpc import RpcProtocol
from explorerd.rpcsubs import RpcSubscriptions
from explorerd.wamp import Broker
from explorerd.wampclient import EdgeSource, RouterPublisher
from tests.observers import WampRecorder
from tests.test_livetail import RecordingHub


def hub():
    return Hub(Clock(), Config.defaults(), Metrics())


def test_the_hub_and_the_fake_hub_are_block_sinks():
    verifyObject(IBlockSink, hub())
    verifyObject(IBlockSink, RecordingHub())


def test_the_wamp_broker_and_the_router_publisher_observe_the_hub():
    h = hub()
    config = Config.defaults(wamp_router="ws://127.0.0.1:1/ws")
    verifyObject(IPublicationObserver, Broker(h, "explorer", CollectorRegistry()))
    verifyObject(IPublicationObserver, RouterPublisher(Clock(), h, config, CollectorRegistry(), clock=Clock()))
    verifyObject(IPublicationObserver, WampRecorder())


def test_the_rpc_subscriptions_observe_the_hub_and_its_protocol_can_say_where_to_resume():
    verifyObject(IPublicationObserver, RpcSubscriptions(hub()))
    verifyClass(IResumeHint, RpcProtocol)


def test_sources_refuse_what_is_not_a_block_sink():
    config = Config.defaults(source="wamp", wamp_router="ws://127.0.0.1:1/ws")
    with pytest.raises(TypeError):
        LiveTail(Clock(), None, object(), registry=CollectorRegistry())
    with pytest.raises(TypeError):
        EdgeSource(Clock(), object(), config, CollectorRegistry(), clock=Clock())


def test_the_hub_refuses_an_observer_that_is_not_one():
    with pytest.raises(TypeError, match="IPublicationObserver"):
        hub().addObserver(lambda kind, data: None)
