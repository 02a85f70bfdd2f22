"""`--runner dask`: Beam's DaskRunner with the translation rebuilt where it is wrong.

Beam 2.77's DaskRunner (apache_beam/runners/dask) is silently wrong on this job;
docs/dask.md has each bug with a minimal repro. This runner keeps its options
(DaskOptions) and its transform overrides (dask_overrides), and translates the
expanded pipeline itself, one dask.delayed task per partition:

- a multi-output ParDo returns its outputs by tag, and each consumer reads only
  its own tag;
- outputs that finish_bundle emits are kept;
- every PCollection that nothing consumes (each sink) is computed, in one graph,
  so shared upstream work runs once;
- a side input is one graph node that every consumer depends on, so it is
  computed once and every consumer sees the same value;
- GroupByKey partitions by a digest of the pickled key, the same in every
  process, where Python's hash() is salted per process.

What it cannot run fails before anything runs: stateful DoFns, timers, splittable
DoFns, non-global windowing, unbounded PCollections and unknown primitives.
Beam metrics are not collected; result.metrics() says so. The scheduler and
every worker need the same environment as the client (this project included),
since the scheduler unpickles the graph and the workers run it.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import pickle
import threading
import uuid

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import (DoFnContext, DoFnInvoker, DoFnSignature, Receiver,
                                        _OutputHandler)
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask.overrides import (_Create, _Flatten, _GroupAlsoByWindow,
                                                _GroupByKeyOnly, _Read, _Reshuffle,
                                                dask_overrides)
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

_LOGGER = logging.getLogger(__name__)

# Partitions after a GroupByKey, Reshuffle or Create when --dask_npartitions is
# not given: enough for every worker of a small cluster to get a share.
DEFAULT_PARTITIONS = 8


class DaskRunnerError(NotImplementedError):
    """The pipeline uses something this runner cannot execute faithfully."""


def dask_address(options: PipelineOptions) -> str | None:
    everything = options.get_all_options()
    return everything.get("dask_address") or everything.get("address")


class DaskRunner(beam_dask.DaskRunner):
    """Runs a bounded, globally windowed pipeline on a dask.distributed cluster."""

    def run_pipeline(self, pipeline, options):
        import dask.distributed as ddist

        dask_options = options.view_as(beam_dask.DaskOptions)
        partitions = dask_options.npartitions or DEFAULT_PARTITIONS
        pipeline.replace_all(dask_overrides())
        translator = _Translator(partitions)
        pipeline.visit(translator)
        sinks = translator.sinks()

        address = dask_address(options)
        cluster = None
        if address is None:
            # In this process: worker processes would be spawned, which re-imports the
            # caller's __main__. One thread, since RunInference shares one model object
            # between the threads of a process.
            cluster = ddist.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                         dashboard_address=None)
            address = cluster.scheduler_address
        client = ddist.Client(address, timeout=dask_options.timeout or 60,
                              set_as_default=False)
        _LOGGER.info("dask: %d tasks' worth of sinks submitted to %s", len(sinks), address)
        futures = client.compute(sinks, optimize_graph=False)
        return DaskPipelineResult(client, futures, cluster)


class DaskPipelineResult(PipelineResult):

    def __init__(self, client, futures, cluster=None):
        super().__init__(PipelineState.RUNNING)
        self._client, self._futures, self._cluster = client, futures, cluster

    def wait_until_finish(self, duration=None):
        try:
            timeout = duration / 1000 if duration is not None else None
            # A result is what raises a worker's exception here; each sink's result is
            # only its element count.
            for future in self._futures:
                future.result(timeout=timeout)
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            self._close()
            raise
        self._close()
        return self._state

    def cancel(self):
        self._client.cancel(self._futures)
        self._state = PipelineState.CANCELLED
        self._close()
        return self._state

    def metrics(self):
        raise DaskRunnerError(
            "the Dask runner does not collect Beam metrics (counters, gauges); dpsynth's "
            "counts are in run_summary.json")

    def _close(self):
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


class _Translator(PipelineVisitor):
    """Expanded Beam pipeline -> for each PCollection, a list of delayed partitions.

    A partition is a list of WindowedValues. A ParDo's partition is a dict from
    output tag to such a list until a consumer picks its tag."""

    def __init__(self, partitions: int):
        self._partitions = partitions
        self._produced = {}  # PCollection -> list of delayed partitions
        self._consumed = set()

    def visit_transform(self, node):
        import dask

        transform = node.transform
        for output in node.outputs.values():
            _require_supported_collection(node, output)
        inputs = [self._input(pcoll) for pcoll in node.inputs
                  if not isinstance(pcoll, pvalue.PBegin)]
        label = node.full_label
        if isinstance(transform, beam.Impulse):
            parts = [dask.delayed(_impulse, pure=True)(dask_key_name=_key(label))]
            self._set_main(node, parts)
        elif isinstance(transform, _Create):
            self._set_main(node, _create_partitions(transform.values, self._partitions, label))
        elif isinstance(transform, _Read):
            self._set_main(node, _read_partitions(transform.source, label))
        elif isinstance(transform, _Flatten):
            self._set_main(node, [part for parts in inputs for part in parts])
        elif isinstance(transform, _Reshuffle):
            self._set_main(node, _shuffle(inputs[0], self._partitions, label, group=False))
        elif isinstance(transform, _GroupByKeyOnly):
            self._set_main(node, _shuffle(inputs[0], self._partitions, label, group=True))
        elif isinstance(transform, _GroupAlsoByWindow):
            # _GroupByKeyOnly already grouped; with only the global window and the
            # default trigger (checked above) there is nothing left to do.
            self._set_main(node, inputs[0])
        elif isinstance(transform, beam.ParDo):
            self._par_do(node, transform, inputs[0])
        else:
            raise DaskRunnerError(
                f"the Dask runner cannot run {label} ({type(transform).__name__})")

    def _input(self, pcoll):
        self._consumed.add(pcoll)
        return self._produced[pcoll]

    def _set_main(self, node, parts):
        (output,) = node.outputs.values()
        self._produced[output] = parts

    def _par_do(self, node, transform, parts):
        import dask

        signature = DoFnSignature(transform.fn)
        for unsupported, what in ((signature.is_stateful_dofn, "state or timers"),
                                  (signature.is_splittable_dofn, "a splittable DoFn"),
                                  (signature.has_bundle_finalization, "bundle finalization")):
            if unsupported():
                raise DaskRunnerError(f"the Dask runner cannot run {node.full_label}: it uses "
                                      f"{what}")
        side_specs, side_values = [], []
        for side in node.side_inputs:
            side_specs.append((type(side), side._view_options()))
            side_values.append(dask.delayed(_concat, pure=True)(
                self._input(side.pvalue), dask_key_name=_key(f"{node.full_label}/side")))
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(node.main_inputs.values()))
        spec = _ParDoSpec(
            key=uuid.uuid4().hex, label=node.full_label,
            pickled_fn=pickler.dumps(transform.fn), args=list(args), kwargs=dict(kwargs),
            window_fn=main_input.windowing.windowfn, side_specs=side_specs)
        outputs = [dask.delayed(_run_bundle, pure=True)(
            spec, part, side_values, dask_key_name=_key(node.full_label, index))
            for index, part in enumerate(parts)]
        for tag, pcoll in node.outputs.items():  # the main output's tag is None
            self._produced[pcoll] = [
                dask.delayed(_pick, pure=True)(part, tag, dask_key_name=_key(
                    f"{node.full_label}[{tag}]", index))
                for index, part in enumerate(outputs)]

    def sinks(self):
        """One count per PCollection that nothing consumes: computing these runs everything."""
        import dask

        unconsumed = [parts for pcoll, parts in self._produced.items()
                      if pcoll not in self._consumed]
        return [dask.delayed(_count, pure=True)(parts, dask_key_name=_key("sink", index))
                for index, parts in enumerate(unconsumed)]


def _require_supported_collection(node, pcoll):
    if not isinstance(pcoll, pvalue.PCollection):
        return
    if not pcoll.is_bounded:
        raise DaskRunnerError(f"the Dask runner cannot run {node.full_label}: its output "
                              "is unbounded")
    windowing = pcoll.windowing
    if not isinstance(windowing.windowfn, GlobalWindows) or not windowing.is_default():
        raise DaskRunnerError(f"the Dask runner cannot run {node.full_label}: only the "
                              "global window with the default trigger is supported")


_key_counter = itertools.count()


def _key(label, index=0):
    """Unique and readable on the dashboard: the Beam label, a serial and the partition."""
    return f"{label}-{next(_key_counter)}-{index}"


class _ParDoSpec:
    """What a ParDo task needs besides its data; plain values, so the scheduler can
    unpickle it without the user's code (the DoFn itself stays pickled bytes)."""

    def __init__(self, *, key, label, pickled_fn, args, kwargs, window_fn, side_specs):
        self.key, self.label, self.pickled_fn = key, label, pickled_fn
        self.args, self.kwargs, self.window_fn = args, kwargs, window_fn
        self.side_specs = side_specs


class _TaggedLists(Receiver):

    def __init__(self, tag, outputs):
        self._values = outputs[tag]

    def receive(self, windowed_value):
        self._values.append(windowed_value)


class _Receivers(dict):

    def __init__(self):
        super().__init__()
        self.outputs = collections.defaultdict(list)

    def __missing__(self, tag):
        self[tag] = receiver = _TaggedLists(tag, self.outputs)
        return receiver


class _DoFnPool:
    """Set-up DoFn instances per worker process and transform, reused across partitions.

    Beam's DaskRunner calls setup() and teardown() around every partition, which
    reloads a model per partition; Beam allows an instance to serve many bundles.
    An instance serves one task at a time."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle = collections.defaultdict(list)

    def take(self, spec):
        with self._lock:
            if self._idle[spec.key]:
                return self._idle[spec.key].pop()
        fn = pickler.loads(spec.pickled_fn)
        signature = DoFnSignature(fn)
        signature.setup_lifecycle_method.method_value()
        return fn

    def give_back(self, spec, fn):
        with self._lock:
            self._idle[spec.key].append(fn)


_POOL = _DoFnPool()


def _run_bundle(spec, part, side_values):
    """One partition through one ParDo: start_bundle, process, finish_bundle."""
    fn = _POOL.take(spec)
    receivers = _Receivers()
    handler = _OutputHandler(
        window_fn=spec.window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
        per_element_output_counter=None, output_batch_converter=None,
        process_yields_batches=False, process_batch_yields_elements=False)
    side_inputs = [SideInputMap(view, options, values)
                   for (view, options), values in zip(spec.side_specs, side_values)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn), handler, context=DoFnContext(spec.label, state=None),
        side_inputs=side_inputs, input_args=spec.args, input_kwargs=spec.kwargs,
        user_state_context=None, bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
    invoker.invoke_start_bundle()
    for element in part:
        invoker.invoke_process(element)
    invoker.invoke_finish_bundle()
    _POOL.give_back(spec, fn)
    return dict(receivers.outputs)


def _pick(outputs, tag):
    return outputs.get(tag, [])


def _impulse():
    return [_global(b"")]


def _global(value):
    return GlobalWindows.windowed_value(value)


def _create_partitions(values, partitions, label):
    import dask

    values = list(values)
    count = max(1, min(partitions, len(values)))
    return [dask.delayed([_global(v) for v in values[i::count]], name=_key(label, i))
            for i in range(count)]


def _read_partitions(source, label):
    import dask

    bundles = list(source.split(desired_bundle_size=64 << 20))
    return [dask.delayed(_read_bundle, pure=True)(bundle, dask_key_name=_key(label, i))
            for i, bundle in enumerate(bundles)]


def _read_bundle(bundle):
    tracker = bundle.source.get_range_tracker(bundle.start_position, bundle.stop_position)
    return [value if isinstance(value, WindowedValue) else _global(value)
            for value in bundle.source.read(tracker)]


def _concat(parts):
    return [value for part in parts for value in part]


def _count(parts):
    return sum(len(part) for part in parts)


def _stable_bucket(key, buckets):
    """The same bucket for the same key in every process (hash() is salted per process)."""
    digest = hashlib.blake2b(pickle.dumps(key, protocol=4), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def _split(part, buckets, by_key):
    split = [[] for _ in range(buckets)]
    for index, value in enumerate(part):
        bucket = (_stable_bucket(value.value[0], buckets) if by_key
                  else _stable_bucket(index, buckets))
        split[bucket].append(value)
    return split


def _gather(splits, bucket, group):
    values = [value for split in splits for value in split[bucket]]
    if not group:
        return values
    groups = {}
    for value in values:
        key, windowed = value.value
        groups.setdefault(key, []).append(
            windowed.value if isinstance(windowed, WindowedValue) else windowed)
    return [_global((key, grouped)) for key, grouped in groups.items()]


def _shuffle(parts, buckets, label, *, group):
    """All-to-all exchange: by key for GroupByKey, evenly for Reshuffle."""
    import dask

    splits = [dask.delayed(_split, pure=True)(part, buckets, group,
                                               dask_key_name=_key(f"{label}/split", i))
              for i, part in enumerate(parts)]
    return [dask.delayed(_gather, pure=True)(splits, bucket, group,
                                             dask_key_name=_key(f"{label}/gather", bucket))
            for bucket in range(buckets)]
