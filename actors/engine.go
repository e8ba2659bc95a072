package actors

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/otafleet/otafleet/actors/cell/cellfsm"
	"github.com/otafleet/otafleet/actors/device/devicefsm"
	"github.com/otafleet/otafleet/actors/task/taskfsm"
	"github.com/otafleet/otafleet/internal/clock"
	"github.com/otafleet/otafleet/messages"
	"github.com/otafleet/otafleet/persistence"
	"github.com/otafleet/otafleet/transport"
)

// requestTimeout bounds a request to an actor (an API call waiting for its
// reply). It is real time inside protoactor's futures, not protocol time.
const requestTimeout = 30 * time.Second

// Errors of the engine API. Errors from the state machines (invalid input,
// invalid transition) pass through wrapped; match them with errors.Is.
var (
	ErrClosed   = errors.New("actors: engine stopped")
	ErrNotFound = errors.New("actors: not found")
	ErrTimeout  = errors.New("actors: request timed out")
)

// Config is the engine's configuration; Default fills what is zero.
type Config struct {
	Device devicefsm.Config
	Cell   cellfsm.Config
	Task   taskfsm.Config
	// PassivateAfter is how long an idle device or cell actor stays in
	// memory after its last message (default 1 minute of clock time).
	PassivateAfter time.Duration
	// SnapshotEvery is the number of events after which a device or cell
	// actor snapshots its state (default 200); 0 keeps the default,
	// negative disables. A task keeps its state as records instead.
	SnapshotEvery int
	// Cluster, when set, makes the engine a node of a cluster (see
	// ClusterConfig); nil runs it alone.
	Cluster *ClusterConfig
}

// Default returns cfg with every unset field at its default.
func (c Config) Default() Config {
	if c.Device == (devicefsm.Config{}) {
		c.Device = devicefsm.DefaultConfig()
	}
	if c.Cell == (cellfsm.Config{}) {
		c.Cell = cellfsm.DefaultConfig()
	}
	if c.Task == (taskfsm.Config{}) {
		c.Task = taskfsm.DefaultConfig()
	}
	if c.PassivateAfter <= 0 {
		c.PassivateAfter = time.Minute
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = 200
	}
	return c
}

// Validate checks the machines' configurations.
func (c Config) Validate() error {
	if err := c.Device.Validate(); err != nil {
		return err
	}
	if err := c.Cell.Validate(); err != nil {
		return err
	}
	if c.Cluster != nil {
		if err := c.Cluster.Validate(); err != nil {
			return err
		}
	}
	return c.Task.Validate()
}

// Deps are the engine's collaborators, passed explicitly.
type Deps struct {
	Store     persistence.EventStore
	Clock     clock.Clock
	Transport transport.Downlinks
	Logger    *slog.Logger
	// Metrics receives the engine's collectors; nil keeps them private.
	Metrics prometheus.Registerer
	// CellStepped, when set, is called after every cell step with the cell's
	// new state (tests check the budget invariant with it). It runs on the
	// cell actor's goroutine and must be quick.
	CellStepped func(cellID string, s cellfsm.State)
	// Activated, when set, is called each time an actor has recovered its
	// state (on its own goroutine).
	Activated func(a Address)
	// Deactivated, when set, is called when an actor has stopped (passivated).
	Deactivated func(a Address)
	// ClusterReceived, when set, is called each time the node has taken an
	// input another node sent it (tests settle a cluster with it).
	ClusterReceived func()
}

// Engine runs one actor per device, cell and task over a journal.
type Engine struct {
	cfg     Config
	deps    Deps
	log     *slog.Logger
	system  *actor.ActorSystem
	dir     *directory
	metrics *metrics
	// taskModels are the live tasks' read models, which task queries read.
	taskModels *taskModels
	// cellModels are the busy cells' published views, which TaskCells reads.
	cellModels *cellModels
	// jobs are the devices' active jobs, which task device pages read.
	jobs *jobTable
	// stopped is closed by Stop: reports waiting for an answer give up.
	stopped chan struct{}
	// dispatch runs the actors' mailboxes on reused goroutines.
	dispatch *poolDispatcher
	// node is the engine's cluster membership; nil on a single node.
	node *node
	// crash is the tests' handle to kill a node abruptly (export_test.go).
	crash    interface{ sever() }
	stopOnce sync.Once
}

// New builds an engine; Start recovers it.
func New(cfg Config, deps Deps) (*Engine, error) {
	cfg = cfg.Default()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Store == nil || deps.Clock == nil || deps.Transport == nil {
		return nil, errors.New("actors: Deps.Store, Deps.Clock and Deps.Transport are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(deps.Metrics, cfg.Cell.Budget)
	if err != nil {
		return nil, err
	}
	quiet := slog.New(slog.DiscardHandler)
	system := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger { return quiet }))
	e := &Engine{cfg: cfg, deps: deps, log: deps.Logger, system: system, metrics: m, taskModels: newTaskModels(), cellModels: newCellModels(), jobs: newJobTable(), stopped: make(chan struct{})}
	e.dispatch = newPoolDispatcher(dispatchWorkers, dispatchIdle, dispatchThroughput, e.stopped)
	e.dir = newDirectory(system.Root, e.props)
	if cfg.Cluster != nil {
		e.node = newNode(e, *cfg.Cluster)
		e.dir.cl = e.node
	}
	return e, nil
}

func (e *Engine) props(a Address) *actor.Props {
	return actor.PropsFromProducer(func() actor.Actor {
		return &shell{e: e, addr: a, machine: e.machineFor(a)}
	}, actor.WithDispatcher(e.dispatch))
}

// machineFor is the state machine of an actor kind. Addresses are built by
// the engine alone, so an unknown kind is a programming error: it panics
// rather than run a stream through the wrong machine.
func (e *Engine) machineFor(a Address) machine {
	switch a.Kind {
	case persistence.KindDevice:
		return &deviceMachine{e: e, s: devicefsm.New(a.ID)}
	case persistence.KindCell:
		return &cellMachine{e: e, s: cellfsm.New(a.ID)}
	case persistence.KindTask:
		return &taskMachine{e: e}
	}
	panic(fmt.Sprintf("actors: no state machine for kind %q (address %s)", a.Kind, a))
}

// Start recovers every task, cell and in-flight device from the journal and
// resumes them: their deadlines are re-armed at their absolute times and
// their idempotent requests repeated. It returns once every recovered actor
// has rebuilt its state, with an error naming each one that could not (a
// corrupt journal entry, with its key): the engine must not run silently
// wrong. An actor that cannot read the store because it is unavailable
// retries, and Start waits for it (or for ctx).
//
// In a cluster, Start first joins it (Config.Cluster) and recovers only
// the streams this node owns; then it follows the membership: when it
// changes, the node passivates the actors it no longer owns and recovers
// the active streams it now owns.
func (e *Engine) Start(ctx context.Context) error {
	if e.node != nil {
		if err := e.node.join(); err != nil {
			return err
		}
		e.node.watch()
	}
	var addrs []Address
	for _, kind := range []persistence.Kind{persistence.KindTask, persistence.KindCell, persistence.KindDevice} {
		n := 0
		err := e.deps.Store.Active(ctx, kind, func(id string) error {
			a := Address{Kind: kind, ID: id}
			if e.node != nil {
				if _, local := e.node.owner(a); !local {
					return nil
				}
			}
			n++
			addrs = append(addrs, a)
			return nil
		})
		if err != nil {
			return fmt.Errorf("actors: listing %s streams to recover: %w", kindName(kind), err)
		}
		e.log.Info("recovering actors", "kind", kindName(kind), "count", n)
	}
	results := make(chan error, len(addrs))
	for _, a := range addrs {
		e.dir.send(a, activation{report: results})
	}
	var errs []error
	for range addrs {
		select {
		case err := <-results:
			if err != nil {
				errs = append(errs, err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errors.Join(errs...)
}

// Stop stops every actor (they finish the message at hand) and the actor
// system. Timers that fire afterwards are dropped. Reports waiting in Deliver
// get ErrClosed at once. A second Stop waits for the first and does nothing.
func (e *Engine) Stop() {
	e.stopOnce.Do(func() {
		if e.node != nil {
			// Leave first: the others take over at once, and whatever
			// runs here twice meanwhile is fenced by the store.
			e.node.leave()
		}
		close(e.stopped)
		e.dir.stopAll()
		if e.node != nil {
			e.node.shutdown()
			return
		}
		e.system.Shutdown()
	})
}

// Settle waits until every message sent to an actor has been handled. With
// the fake clock nothing else moves until the clock is advanced, so tests
// alternate clock.Advance and Settle.
func (e *Engine) Settle() { e.dir.settle() }

// Deliver hands an uplink to a device's actor (transport.Uplinks). The time
// of arrival is stamped by the actor's clock unless the input carries one.
//
// A device report (messages.DeviceInput.IsReport) is waited for: Deliver
// returns nil once the actor has stepped it and its events are durable, or
// once the actor has found it a duplicate of the last report it journaled or
// refused it as invalid (sending it again cannot help, so it is acknowledged
// too). It returns an error only when the report may not be journaled: the
// journal write failed, the actor cannot recover, the engine is stopping, or
// ctx ended first. A transport acknowledges a report to the device only
// after a nil return, so that a crash never loses an acknowledged report;
// group commit keeps this cheap (the actors' synced appends share fsyncs).
//
// A report marked no_ack (messages.DeviceInput.NoAck: an answer to a request
// of the server's own, a non-confirmable notification) is waited for the
// same way, but its events are durable on return only when one of them must
// be (messages' MustSync rules); otherwise they are written in order and
// become durable with the next synced append. The device is acknowledged
// nothing on its strength and never sends it again; a crash that loses it
// takes the device back to the step before, whose deadline and Resume ask
// again. A transport marks no_ack only such reports. In a cluster, such a
// report for an actor another node owns is told to that node, and Deliver
// returns once it is sent (nothing is waited for on its strength; a node's
// death loses it as a crash would); a node that has told a peer
// maxNoAckTold of them not yet stepped there waits for the next as for any
// report, so a device's flood of them is held back as on one node.
//
// Every other input (presence, DownloadServed notes) is queued in the
// actor's mailbox and Deliver returns at once: nothing is acknowledged on
// their strength (presence is re-established by the device's next session
// after a crash, and DownloadServed only annotates the timeline), so they
// need not wait for an fsync.
//
// A registration update (an Uplink with RegistrationUpdate) reaches only a
// live device actor; for a passivated one it is dropped, without waking it
// (the idle fleet's registration updates, every lifetime of every device,
// cost no replay). That is safe because a device with a job is never
// passivated (and Start recovers every one before the transports start), and
// for a device without one the update only confirms the presence its
// registration recorded: the machine marks it online (already so) and owes it
// nothing. A queue-mode device's wake-up is then not recorded; a job that
// starts later waits for its next one.
func (e *Engine) Deliver(ctx context.Context, deviceID string, in *messages.DeviceInput) error {
	if err := persistence.ValidateID(deviceID); err != nil {
		return err
	}
	if e.dir.closed.Load() {
		return ErrClosed
	}
	a := Address{Kind: persistence.KindDevice, ID: deviceID}
	if n := e.node; n != nil && in.GetRoute() == "" && in.GetDownloadServed() == nil {
		// The session is here (a download server's note says nothing of
		// where the session is): downlinks come back here.
		in.Route = n.me()
	}
	if !in.IsReport() {
		if in.GetUplink().GetRegistrationUpdate() {
			if n := e.node; n != nil {
				if owner, local := n.owner(a); !local {
					n.tell(owner, a, in, true, 0)
					return nil
				}
			}
			if !e.dir.sendIfLive(a, in) {
				e.metrics.updatesSkipped.Inc()
			}
			return nil
		}
		e.dir.send(a, in)
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	if n := e.node; n != nil {
		if owner, local := n.owner(a); !local {
			if in.GetNoAck() && n.tellNoAck(owner, a, in, false) {
				return nil
			}
			r, err := n.request(ctx, owner, &messages.ClusterRequest{Kind: string(a.Kind), Id: a.ID,
				Request: &messages.ClusterRequest_Report{Report: in}})
			if err != nil {
				return err
			}
			return replyErr(r)
		}
	}
	return e.deliverReport(ctx, a, in)
}

// deliverReport hands a report to this node's actor and waits as Deliver
// does.
func (e *Engine) deliverReport(ctx context.Context, a Address, in *messages.DeviceInput) error {
	done := make(chan error, 1)
	e.dir.deliverLocal(a, report{in: in, done: done})
	select {
	case err := <-done:
		return err
	case <-e.stopped:
		return ErrClosed
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%w: %s: %w", ErrTimeout, a, ctx.Err())
		}
		return ctx.Err()
	}
}

// report is a device report sent by Deliver, answered on done with nil once
// it is journaled (or was a duplicate or invalid), or with the actor's error.
// (A channel rather than a protoactor future: one report per device message
// is the engine's hottest path.)
//
// A report marked no_ack that another node told this one (node.tellNoAck)
// has no done: no one waits for it; then runs once it was stepped instead.
type report struct {
	in   *messages.DeviceInput
	done chan<- error // buffered: the actor never waits on it
	then func()
}

// answer answers the report: err on done, or then.
func (r report) answer(err error) {
	if r.done != nil {
		r.done <- err
	}
	if r.then != nil {
		r.then()
	}
}

// CreateTask creates a batch task. The task's validation errors come back
// (wrapping taskfsm.ErrInvalidInput or ErrInvalidTransition).
func (e *Engine) CreateTask(ctx context.Context, c *messages.CreateTask) error {
	if err := persistence.ValidateID(c.GetTaskId()); err != nil {
		return fmt.Errorf("task_id: %w", err)
	}
	return e.taskCommand(ctx, c.GetTaskId(), &messages.TaskInput{Kind: &messages.TaskInput_Create{Create: c}})
}

// StopTask stops a task (taskfsm.ErrInvalidTransition when it has finished).
func (e *Engine) StopTask(ctx context.Context, taskID string) error {
	return e.taskCommand(ctx, taskID, &messages.TaskInput{Kind: &messages.TaskInput_Stop{Stop: &messages.StopTask{}}})
}

// RetryTask re-runs a task's failed and stopped sub-tasks (all when deviceIDs is empty).
func (e *Engine) RetryTask(ctx context.Context, taskID string, deviceIDs []string) error {
	return e.taskCommand(ctx, taskID, &messages.TaskInput{Kind: &messages.TaskInput_Retry{Retry: &messages.RetryTask{DeviceIds: deviceIDs}}})
}

// command is an API call to an actor, answered with an error (nil on success).
type command struct{ in proto.Message }

// query asks an actor for a view of its state.
type query struct{}

func (e *Engine) taskCommand(ctx context.Context, taskID string, in *messages.TaskInput) error {
	if err := persistence.ValidateID(taskID); err != nil {
		return fmt.Errorf("task_id: %w", err)
	}
	res, err := e.ask(ctx, Address{Kind: persistence.KindTask, ID: taskID}, command{in: in})
	if err != nil {
		return err
	}
	if res == nil {
		return nil
	}
	return res.(error)
}

// ask sends msg to the actor at a and waits for its answer; in a cluster,
// to the node that owns a.
func (e *Engine) ask(ctx context.Context, a Address, msg any) (any, error) {
	if e.dir.closed.Load() {
		return nil, ErrClosed
	}
	if n := e.node; n != nil {
		for attempt := 1; ; attempt++ {
			owner, local := n.owner(a)
			if local {
				break
			}
			req, ok := wireRequest(a, msg)
			if !ok {
				return nil, fmt.Errorf("actors: cluster: no wire form for %T", msg)
			}
			r, err := n.request(ctx, owner, req)
			if err != nil {
				if readOnly(msg) && attempt < maxAskAttempts && ctx.Err() == nil && errors.Is(err, ErrTimeout) && !n.isMember(owner) {
					// The owner left before it answered (it died): a
					// read is asked again of the actor's new owner
					// (a download's authorization, a view), where the
					// actor recovers from the store. A command is not:
					// the dead node may have carried it out.
					continue
				}
				return nil, err
			}
			return decodeReply(a, r)
		}
	}
	return e.askLocal(ctx, a, msg)
}

// maxAskAttempts bounds the owners a read is asked of when they leave
// before they answer (ask).
const maxAskAttempts = 3

// readOnly reports whether msg only reads an actor's state.
func readOnly(msg any) bool {
	switch msg.(type) {
	case query, taskQuery:
		return true
	}
	return false
}

// askLocal asks this node's actor at a.
func (e *Engine) askLocal(ctx context.Context, a Address, msg any) (any, error) {
	if e.dir.closed.Load() {
		return nil, ErrClosed
	}
	f := e.dir.request(a, msg, func(pid *actor.PID) *actor.Future {
		return e.system.Root.RequestFuture(pid, msg, requestTimeout)
	})
	res, err := waitFuture(ctx, f)
	if ctx.Err() != nil && err == ctx.Err() {
		return nil, err
	}
	if r, ok := res.(*messages.ClusterReply); ok {
		// A request that waited for a passivating actor whose successor
		// runs on another node (directory.stopped) is answered from there.
		return decodeReply(a, r)
	}
	switch {
	case errors.Is(err, actor.ErrTimeout):
		return nil, fmt.Errorf("%w: %s", ErrTimeout, a)
	case errors.Is(err, actor.ErrDeadLetter):
		return nil, fmt.Errorf("%w: %s stopped", ErrClosed, a)
	}
	return res, err
}

// TaskView is a task's state for the API.
type TaskView struct {
	Task     *messages.TaskCreated
	Status   messages.TaskStatus
	Progress taskfsm.Progress
	// CreatedAt is when the task was created; FinishedAt when it reached its
	// final status (zero while it has not).
	CreatedAt, FinishedAt time.Time
	// Subtasks is filled by TaskDevices, not by Task.
	Subtasks []taskfsm.Subtask
}

type taskQuery struct {
	offset, limit int
	status        messages.SubtaskStatus
}

// Task returns a task's status and counters; ErrNotFound if it does not exist.
func (e *Engine) Task(ctx context.Context, taskID string) (TaskView, error) {
	return e.TaskDevices(ctx, taskID, 0, 0, 0)
}

// TaskDevices returns a task with a page of its sub-tasks in target order,
// optionally only those with status (0: any).
//
// A live task is read from the read model its actor publishes after each
// step, without waiting for the actor: the answer is the state as of the
// last step journaled, whatever the actor is doing. A task that is not live
// (finished and passivated, or not yet recovered) is asked of its actor,
// which recovers it from the journal and publishes its read model for the
// queries after.
func (e *Engine) TaskDevices(ctx context.Context, taskID string, offset, limit int, status messages.SubtaskStatus) (TaskView, error) {
	if err := persistence.ValidateID(taskID); err != nil {
		return TaskView{}, fmt.Errorf("task_id: %w", err)
	}
	if tm := e.taskModels.get(taskID); tm != nil {
		return tm.view(offset, limit, status), nil
	}
	return e.askTask(ctx, taskID, offset, limit, status)
}

// TaskWatch returns a task's status and counters as Task does, and a
// channel closed when they may have changed: at the task's next step that
// journals events, or when it stops being live (read it again then). For a
// task that is not live the channel is closed already.
func (e *Engine) TaskWatch(ctx context.Context, taskID string) (TaskView, <-chan struct{}, error) {
	if err := persistence.ValidateID(taskID); err != nil {
		return TaskView{}, nil, fmt.Errorf("task_id: %w", err)
	}
	if tm := e.taskModels.get(taskID); tm != nil {
		v, wake := tm.watch()
		return v, wake, nil
	}
	v, err := e.askTask(ctx, taskID, 0, 0, 0)
	if err != nil {
		return TaskView{}, nil, err
	}
	if e.node != nil && !v.Status.Final() {
		if _, local := e.node.owner(Address{Kind: persistence.KindTask, ID: taskID}); !local {
			// A live task of another node: read it again after a while.
			wake := make(chan struct{})
			e.deps.Clock.AfterFunc(remoteWatchEvery, func() { close(wake) })
			return v, wake, nil
		}
	}
	return v, closedChan, nil
}

// remoteWatchEvery is how often TaskWatch reads again a live task that
// another node of a cluster runs (clock time).
const remoteWatchEvery = time.Second

// closedChan is a channel that is closed.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// askTask asks the task's actor for its view (activating it), on the node
// that owns it.
func (e *Engine) askTask(ctx context.Context, taskID string, offset, limit int, status messages.SubtaskStatus) (TaskView, error) {
	return e.askTaskWith(ctx, e.ask, taskID, offset, limit, status)
}

// askTaskLocal asks this node's task actor.
func (e *Engine) askTaskLocal(ctx context.Context, taskID string, offset, limit int, status messages.SubtaskStatus) (TaskView, error) {
	return e.askTaskWith(ctx, e.askLocal, taskID, offset, limit, status)
}

func (e *Engine) askTaskWith(ctx context.Context, ask func(context.Context, Address, any) (any, error), taskID string, offset, limit int, status messages.SubtaskStatus) (TaskView, error) {
	res, err := ask(ctx, Address{Kind: persistence.KindTask, ID: taskID}, taskQuery{offset: offset, limit: limit, status: status})
	if err != nil {
		return TaskView{}, err
	}
	if err, ok := res.(error); ok {
		return TaskView{}, err
	}
	return res.(TaskView), nil
}

// DeviceView is a device's state for the API.
type DeviceView struct {
	State devicefsm.State
}

// Device returns the device actor's state (activating it if passivated).
func (e *Engine) Device(ctx context.Context, deviceID string) (DeviceView, error) {
	if err := persistence.ValidateID(deviceID); err != nil {
		return DeviceView{}, fmt.Errorf("device_id: %w", err)
	}
	res, err := e.ask(ctx, Address{Kind: persistence.KindDevice, ID: deviceID}, query{})
	if err != nil {
		return DeviceView{}, err
	}
	if err, ok := res.(error); ok {
		return DeviceView{}, err
	}
	return res.(DeviceView), nil
}

// Cell returns a cell's budget state.
func (e *Engine) Cell(ctx context.Context, cellID string) (cellfsm.State, error) {
	if err := persistence.ValidateID(cellID); err != nil {
		return cellfsm.State{}, fmt.Errorf("cell_id: %w", err)
	}
	res, err := e.ask(ctx, Address{Kind: persistence.KindCell, ID: cellID}, query{})
	if err != nil {
		return cellfsm.State{}, err
	}
	if err, ok := res.(error); ok {
		return cellfsm.State{}, err
	}
	return res.(cellfsm.State), nil
}

// Lost returns a channel closed when this node finds itself missing from
// its own cluster's member list (its etcd lease expired: etcd was
// unreachable for longer than the lease, or the node stalled). The others
// own its actors by then, so it stops all of them and takes no more work;
// the command exits non-zero, and a restart joins again. On a single node
// it is never closed.
func (e *Engine) Lost() <-chan struct{} {
	if e.node == nil {
		return nil
	}
	return e.node.lost
}

// ClusterStatus is a node's view of its cluster.
type ClusterStatus struct {
	// Self is this node's address; Members every member's (with Self),
	// sorted.
	Self    string
	Members []string
}

// Cluster returns the node's view of its cluster; ok is false on a single
// node.
func (e *Engine) Cluster() (st ClusterStatus, ok bool) {
	if e.node == nil {
		return ClusterStatus{}, false
	}
	m := e.node.memberList()
	slices.Sort(m)
	return ClusterStatus{Self: e.node.me(), Members: m}, true
}

// NodeStatus is one member's figures in ClusterNodes.
type NodeStatus struct {
	Addr string
	// Live counts the node's live actors by kind (as Live); nil when the
	// node did not answer (Err says why).
	Live map[string]int
	Err  error
}

// ClusterNodes asks every member of the cluster for its live actors by
// kind (`otafleet cluster status`), in the order of Cluster's Members; ok
// is false on a single node.
func (e *Engine) ClusterNodes(ctx context.Context) (nodes []NodeStatus, ok bool) {
	st, ok := e.Cluster()
	if !ok {
		return nil, false
	}
	nodes = make([]NodeStatus, len(st.Members))
	var wg sync.WaitGroup
	for i, addr := range st.Members {
		nodes[i].Addr = addr
		if addr == st.Self {
			nodes[i].Live = e.Live()
			continue
		}
		wg.Go(func() {
			r, err := e.node.request(ctx, addr, &messages.ClusterRequest{Request: &messages.ClusterRequest_Node{Node: &messages.NodeQuery{}}})
			if err == nil {
				err = replyErr(r)
			}
			if err != nil {
				nodes[i].Err = err
				return
			}
			nodes[i].Live = map[string]int{}
			for k, c := range r.GetLive() {
				nodes[i].Live[k] = int(c)
			}
		})
	}
	wg.Wait()
	return nodes, true
}

// Live returns the number of live actors per kind ("device", "cell", "task").
func (e *Engine) Live() map[string]int {
	out := map[string]int{}
	for k, n := range e.dir.count() {
		out[kindName(k)] = n
	}
	return out
}

func kindName(k persistence.Kind) string {
	switch k {
	case persistence.KindDevice:
		return "device"
	case persistence.KindCell:
		return "cell"
	case persistence.KindTask:
		return "task"
	}
	return string(k)
}
