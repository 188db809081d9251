package lincheck

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/descriptor-service/descriptor-service/client-go/descriptortest"
)

// The faults a history may suffer (one kind per history, injected once).
const (
	faultNone         = "none"
	faultKill         = "kill"          // a replica SIGKILLed mid-call (Clear or SetDescriptor), then restarted
	faultStop         = "stop"          // a replica SIGSTOPped mid-Clear until a call to it failed, then SIGCONT
	faultRedisRestart = "redis-restart" // Redis killed mid-Clear and started again, empty, on its port
	faultSlowDelete   = "slow-delete"   // the back service SIGSTOPped mid-Clear for longer than the front's backendtimeout
)

type testCase struct {
	env   envKind
	fault string
}

func (c testCase) String() string { return c.env.cache + "/" + c.fault }

var allCases = []testCase{
	{envKind{"redis", false}, faultNone},
	{envKind{"redis", false}, faultKill},
	{envKind{"redis", false}, faultStop},
	{envKind{"redis", false}, faultRedisRestart},
	{envKind{"redis", true}, faultSlowDelete},
	{envKind{"inmemory", false}, faultNone},
	{envKind{"inmemory", false}, faultKill},
	{envKind{"inmemory", false}, faultStop},
	{envKind{"inmemory", true}, faultSlowDelete},
}

// controlCases run one server without a cache (every Stat reads storage): a service
// that keeps the guarantee by construction, so the harness itself (faults, settling,
// unknown outcomes) is shown to raise no false alarm. Run with -cases.
var controlCases = []testCase{
	{envKind{"none", false}, faultNone},
	{envKind{"none", false}, faultKill},
	{envKind{"none", false}, faultStop},
	{envKind{"none", true}, faultSlowDelete},
}

// key is a digest in a repository: one register of the model.
type key struct {
	i      int
	digest digest.Digest
	repo   string
	link   string
	size   int64
}

const (
	outcomeOK = iota
	outcomeNotFound
	outcomeUnknown
)

type clearRec struct {
	key, client, n int
	call, ret      int64
	deadline       int64 // a killed Clear's delete happened, if at all, before this
	outcome        int
	killed         bool // failed while its process was SIGKILLed: nothing vouches for it
	replica        string
}

// history is one run of the workload against an env, and what it recorded.
type history struct {
	t     *testing.T
	e     *env
	c     testCase
	n     int
	seed  uint64
	start time.Time
	keys  []*key
	tmp   string

	mu     sync.Mutex
	ops    []porcupine.Operation
	notes  []porcupine.Annotation
	clears []clearRec
	nclear int

	errored     atomic.Bool // a call failed: a process may still be working on it
	armed       atomic.Bool
	trigger     chan int      // the replica a call is about to go to, once armed
	clearFailed chan struct{} // a Clear failed
	fired       atomic.Bool
	// cut is closed to end the workload early: half of the faulty histories end
	// right after the fault healed, so its after-effects (an entry put back, a
	// delete that went on) reach the end of the history unrepaired by later calls.
	cut     chan struct{}
	cutOnce sync.Once
}

func (h *history) now() int64 { return int64(time.Since(h.start)) }

func (h *history) add(client int, call, ret int64, in Input, out Output, meta string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ops = append(h.ops, porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret, Metadata: meta})
}

func (h *history) note(a porcupine.Annotation) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.notes = append(h.notes, a)
}

func (h *history) faultNote(start int64, text string) {
	h.note(porcupine.Annotation{Tag: "fault", Start: start, End: h.now(), Description: text, BackgroundColor: "#ffcccc"})
}

func newHistory(t *testing.T, e *env, c testCase, n int, seed uint64) *history {
	h := &history{t: t, e: e, c: c, n: n, seed: seed, trigger: make(chan int, 1), clearFailed: make(chan struct{}, 1), cut: make(chan struct{})}
	h.tmp = filepath.Join(e.root, "lincheck-tmp")
	if err := os.MkdirAll(h.tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	layout := descriptortest.Layout{Root: e.root}
	var digests []digest.Digest
	var sizes []int64
	for i := 0; i < 2; i++ {
		content := []byte(fmt.Sprintf("lincheck seed %d history %d blob %d", seed, n, i))
		sum := sha256.Sum256(content)
		d := digest.Digest("sha256:" + hex.EncodeToString(sum[:]))
		writeAtomic(t, h.tmp, layout.BlobPath(string(d)), content)
		digests = append(digests, d)
		sizes = append(sizes, int64(len(content)))
	}
	// Two repositories share the first digest: a repository Clear also drops the
	// global entry the other repository's Stat reads.
	for i, kd := range []struct {
		d    int
		repo string
	}{{0, "lin/a"}, {0, "lin/b"}, {1, "lin/a"}} {
		d := digests[kd.d]
		h.keys = append(h.keys, &key{i: i, digest: d, repo: kd.repo, link: layout.LinkPath(kd.repo, string(d)), size: sizes[kd.d]})
	}
	return h
}

// writeAtomic writes data to path as one rename (a reader sees all or nothing),
// creating its directory again if a concurrent delete removed it.
func writeAtomic(t testing.TB, tmpDir, path string, data []byte) {
	f, err := os.CreateTemp(tmpDir, "w-")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil && attempt > 100 {
			t.Fatal(err)
		}
		err := os.Rename(f.Name(), path)
		if err == nil {
			return
		}
		if !errors.Is(err, fs.ErrNotExist) || attempt > 100 {
			t.Fatalf("rename to %s: %v", path, err)
		}
		// the directory was removed (an empty link directory, by a Clear) between the two calls: again
	}
}

func reason(err error) string {
	var e *descriptor.Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return err.Error()
}

// before is called just before a call of kind goes to replica ri: an armed fault
// fires on it.
func (h *history) before(ri int, kind string) {
	if !h.armed.Load() {
		return
	}
	switch h.c.fault {
	case faultKill:
		if kind != "clear" && kind != "set" {
			return
		}
	default:
		if kind != "clear" {
			return
		}
	}
	if h.armed.CompareAndSwap(true, false) {
		h.trigger <- ri
	}
}

func (h *history) failed(r *replica) {
	h.errored.Store(true)
	r.noteFailure()
}

func (h *history) push(client int, k *key, ri int, rnd *rand.Rand) {
	incarnations := make([]int64, len(h.e.servers))
	for i, r := range h.e.servers {
		incarnations[i] = r.incarnation.Load()
		if r.down.Load() {
			incarnations[i] = -1
		}
	}
	call := h.now()
	writeAtomic(h.t, h.tmp, k.link, []byte(k.digest))
	ret := h.now()
	h.add(client, call, ret, Input{Key: k.i, Kind: Push}, Output{}, "link written to storage")
	// A registry's commit writes the link, then the cache: the gap is where a
	// concurrent delete lands.
	if !*withSet {
		return
	}
	think(rnd, 4*time.Millisecond)
	ri = h.pick(ri)
	r := h.e.servers[ri]
	h.before(ri, "set")
	s := h.now()
	err := r.Client().Repository(k.repo).SetDescriptor(context.Background(), k.digest,
		distribution.Descriptor{MediaType: "application/octet-stream", Digest: k.digest, Size: k.size})
	text := fmt.Sprintf("k%d set via %s -> ok", k.i, r.name)
	if err != nil {
		text = fmt.Sprintf("k%d set via %s -> %s", k.i, r.name, reason(err))
		h.failed(r)
	}
	e := h.now()
	h.note(porcupine.Annotation{ClientId: client, Start: s, End: e, Description: text, BackgroundColor: "#e8f0ff"})
	// An in-memory cache keeps its fences in the process: one restarted since the
	// link was written has none for a Clear that returned before, so this set may
	// prime the blob whatever storage holds (the model's Prime).
	if err == nil && h.c.env.cache == "inmemory" && r.incarnation.Load() != incarnations[ri] {
		h.add(client, s, e, Input{Key: k.i, Kind: Prime}, Output{}, text+" (unfenced: its process restarted since the link)")
	}
}

// clear returns whether the Clear answered OK.
func (h *history) clear(client int, k *key, ri int) bool {
	r := h.e.servers[ri]
	inc, wasDown := r.incarnation.Load(), r.down.Load()
	h.before(ri, "clear")
	call := h.now()
	err := r.Client().Repository(k.repo).Clear(context.Background(), k.digest)
	ret := h.now()
	rec := clearRec{key: k.i, client: client, call: call, ret: ret, replica: r.name}
	switch {
	case err == nil:
		rec.outcome = outcomeOK
	case reason(err) == descriptor.ReasonBlobUnknown:
		rec.outcome = outcomeNotFound
	default:
		rec.outcome = outcomeUnknown
		rec.killed = wasDown || r.incarnation.Load() != inc
		if rec.killed {
			rec.deadline = max(ret, int64(r.KillDone().Sub(h.start)))
		}
		h.failed(r)
		h.note(porcupine.Annotation{ClientId: client, Start: call, End: ret,
			Description: fmt.Sprintf("k%d clear via %s -> %s", k.i, r.name, reason(err)), BackgroundColor: "#fff0c0"})
		select {
		case h.clearFailed <- struct{}{}:
		default:
		}
	}
	h.mu.Lock()
	h.nclear++
	rec.n = h.nclear
	h.clears = append(h.clears, rec)
	h.mu.Unlock()
	return err == nil
}

// stat records a Stat through replica ri; it returns false when the call failed.
func (h *history) stat(client int, k *key, ri int) bool {
	r := h.e.servers[ri]
	h.before(ri, "stat")
	call := h.now()
	desc, err := r.Client().Repository(k.repo).Stat(context.Background(), k.digest)
	ret := h.now()
	switch {
	case err == nil:
		if desc.Digest != k.digest {
			h.t.Errorf("%s: Stat(%s, %s) answered digest %s", h.c, k.digest, k.repo, desc.Digest)
		}
		h.add(client, call, ret, Input{Key: k.i, Kind: Stat}, Output{Present: true}, "via "+r.name)
	case reason(err) == descriptor.ReasonBlobUnknown:
		h.add(client, call, ret, Input{Key: k.i, Kind: Stat}, Output{Present: false}, "via "+r.name)
	default:
		h.failed(r)
		h.note(porcupine.Annotation{ClientId: client, Start: call, End: ret,
			Description: fmt.Sprintf("k%d stat via %s -> %s", k.i, r.name, reason(err)), BackgroundColor: "#eeeeee"})
		return false
	}
	return true
}

// read records a direct read of the link in storage (the ground truth).
func (h *history) read(client int, k *key) (present, ok bool) {
	call := h.now()
	data, err := os.ReadFile(k.link)
	ret := h.now()
	switch {
	case err == nil:
		if string(data) != string(k.digest) {
			h.t.Errorf("%s: link %s holds %q", h.c, k.link, data)
		}
		present = true
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR):
	default:
		h.t.Logf("%s: read %s: %v", h.c, k.link, err)
		return false, false
	}
	h.add(client, call, ret, Input{Key: k.i, Kind: Read}, Output{Present: present}, "storage")
	return present, true
}

// pick returns replica ri, or while it is down (SIGKILLed, restarting) another one
// that is up, as a load balancer would; with none, it waits for ri to be up again.
func (h *history) pick(ri int) int {
	n := len(h.e.servers)
	for i := 0; i < n; i++ {
		if j := (ri + i) % n; !h.e.servers[j].down.Load() {
			return j
		}
	}
	<-h.e.servers[ri].Up()
	return ri
}

func think(rnd *rand.Rand, most time.Duration) {
	if d := time.Duration(rnd.Int64N(int64(most))); d > 0 {
		time.Sleep(d) // random think time: part of the workload
	}
}

// client runs one workload client until end: pushes, Clears (most followed at once
// by a Stat, on the other replica when there is one), Stats and storage reads, on
// three keys, one of them hot.
func (h *history) client(id int, end time.Time) {
	rnd := rand.New(rand.NewPCG(h.seed, uint64(id)+1))
	n := len(h.e.servers)
	for time.Now().Before(end) {
		select {
		case <-h.cut:
			return
		default:
		}
		var k *key
		switch p := rnd.IntN(4); {
		case p < 2:
			k = h.keys[0]
		default:
			k = h.keys[p-1]
		}
		ri := h.pick(rnd.IntN(n))
		switch p := rnd.IntN(100); {
		case p < 30:
			h.push(id, k, ri, rnd)
		case p < 60:
			if h.clear(id, k, ri) && rnd.IntN(100) < 70 {
				h.stat(id, k, h.pick((ri+1)%n))
			}
		case p < 90:
			h.stat(id, k, ri)
		default:
			h.read(id, k)
		}
		think(rnd, 3*time.Millisecond)
	}
}

// inject arms the history's fault at a random point of the workload, waits for a
// call it applies to, and injects it (then heals it), unless the workload ends first.
func (h *history) inject(rnd *rand.Rand, duration time.Duration, workloadDone <-chan struct{}) {
	if h.c.fault == faultNone {
		return
	}
	timer := time.NewTimer(duration/5 + time.Duration(rnd.Int64N(int64(duration*2/5))))
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-workloadDone:
		return
	}
	h.armed.Store(true)
	var ri int
	select {
	case ri = <-h.trigger:
	case <-workloadDone:
		h.armed.Store(false)
		return
	}
	h.fired.Store(true)
	think(rnd, 2*time.Millisecond) // land anywhere in the call
	start := h.now()
	switch h.c.fault {
	case faultKill:
		r := h.e.servers[ri]
		r.kill()
		h.faultNote(start, "SIGKILL "+r.name+", restarted")
	case faultStop:
		r := h.e.servers[ri]
		r.drainFailures()
		r.stop()
		h.waitFailure(r.failed)
		r.cont()
		h.faultNote(start, "SIGSTOP "+r.name+" until a call to it failed, SIGCONT")
	case faultRedisRestart:
		h.e.redis.restart()
		h.faultNote(start, "Redis SIGKILLed, started again empty")
	case faultSlowDelete:
		select {
		case <-h.clearFailed:
		default:
		}
		h.e.back.stop()
		h.waitFailure(h.clearFailed)
		h.e.back.cont()
		h.faultNote(start, "back service SIGSTOPped until a Clear timed out in front, SIGCONT")
	}
	if rnd.IntN(2) == 0 {
		at := h.now()
		h.note(porcupine.Annotation{Tag: "fault", Start: at, End: at, Description: "workload ends"})
		h.cutOnce.Do(func() { close(h.cut) })
	}
}

// waitFailure waits for the event (a call failed), within a bound.
func (h *history) waitFailure(ch <-chan struct{}) {
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
		h.t.Logf("%s #%d: no call failed within 10s of the fault", h.c, h.n)
	}
}

// finalRound reads every key in storage and Stats it on every server; consistent
// when every answer agrees with storage.
func (h *history) finalRound(client int) (ops []porcupine.Operation, start int64, consistent bool) {
	start = h.now()
	consistent = true
	for _, k := range h.keys {
		call := h.now()
		data, err := os.ReadFile(k.link)
		ret := h.now()
		stored := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			consistent = false
			continue
		}
		if stored && string(data) != string(k.digest) {
			h.t.Errorf("%s: link %s holds %q", h.c, k.link, data)
		}
		ops = append(ops, porcupine.Operation{ClientId: client, Input: Input{Key: k.i, Kind: Read}, Call: call, Output: Output{Present: stored}, Return: ret, Metadata: "settle"})
		for _, r := range h.e.servers {
			call := h.now()
			_, err := r.Client().Repository(k.repo).Stat(context.Background(), k.digest)
			ret := h.now()
			var present bool
			switch {
			case err == nil:
				present = true
			case reason(err) == descriptor.ReasonBlobUnknown:
			default:
				consistent = false
				continue
			}
			if present != stored {
				consistent = false
			}
			ops = append(ops, porcupine.Operation{ClientId: client, Input: Input{Key: k.i, Kind: Stat}, Call: call, Output: Output{Present: present}, Return: ret, Metadata: "settle via " + r.name})
		}
	}
	return ops, start, consistent
}

// settle lets the processes finish what failed calls left running (a Clear that
// timed out in front still deletes when the back resumes; a stopped replica serves
// the calls it had queued), then records one last round of reads. While a call
// failed in the history, rounds repeat until every answer agrees with storage, for
// at most -settle; the last round is the one recorded. It returns the point from
// which every Clear of unknown outcome must be final.
func (h *history) settle(client int) int64 {
	deadline := time.Now().Add(*settleTimeout)
	for {
		ops, start, consistent := h.finalRound(client)
		if consistent || !h.errored.Load() || time.Now().After(deadline) {
			h.mu.Lock()
			h.ops = append(h.ops, ops...)
			h.mu.Unlock()
			if !consistent {
				h.note(porcupine.Annotation{Tag: "settle", Start: start, End: h.now(), Description: "did not settle: an answer disagrees with storage", BackgroundColor: "#ffcccc"})
			}
			return start
		}
		time.Sleep(20 * time.Millisecond) // poll for the event: every answer agrees with storage
	}
}

// operations is the recorded history as the model's operations: each Clear becomes
// its effect on storage and the point from which it is final.
func (h *history) operations(settled int64) []porcupine.Operation {
	ops := append([]porcupine.Operation(nil), h.ops...)
	for _, c := range h.clears {
		meta := "via " + c.replica
		switch c.outcome {
		case outcomeOK:
			ret := max(c.ret, c.call+1)
			ops = append(ops,
				porcupine.Operation{ClientId: c.client, Input: Input{Key: c.key, Kind: ClearDelete, Clear: c.n}, Call: c.call, Return: ret - 1, Metadata: meta},
				porcupine.Operation{ClientId: c.client, Input: Input{Key: c.key, Kind: ClearFinal, Clear: c.n}, Call: ret, Return: ret, Metadata: meta + ": returned OK"})
		case outcomeNotFound:
			ops = append(ops, porcupine.Operation{ClientId: c.client, Input: Input{Key: c.key, Kind: ClearNotFound, Clear: c.n}, Call: c.call, Return: c.ret, Metadata: meta})
		case outcomeUnknown:
			// Its delete may come late (a stopped replica resumes, an abandoned
			// backend call goes on), but before the history settled; a killed
			// process deleted, if at all, before it died.
			end := max(settled-2, c.call)
			if c.killed {
				end = min(end, max(c.deadline, c.call))
			}
			ops = append(ops, porcupine.Operation{ClientId: c.client, Input: Input{Key: c.key, Kind: ClearDelete, Clear: c.n, Maybe: true}, Call: c.call, Return: end, Metadata: meta + ": failed, outcome unknown"})
			if !c.killed {
				ops = append(ops, porcupine.Operation{ClientId: c.client, Input: Input{Key: c.key, Kind: ClearFinal, Clear: c.n}, Call: settled - 1, Return: settled - 1, Metadata: meta + ": final once settled"})
			}
		}
	}
	return ops
}

type result struct {
	ok, violation, inconclusive bool
	fired                       bool
	ops, unknownClears          int
	path                        string
}

func runHistory(t *testing.T, e *env, c testCase, n int, seed uint64, outDir string) result {
	h := newHistory(t, e, c, n, seed)
	for _, r := range e.servers {
		r.drainFailures()
	}
	clients := *numClients
	h.start = time.Now()
	end := h.start.Add(*duration)
	workloadDone := make(chan struct{})
	var injected sync.WaitGroup
	injected.Add(1)
	go func() {
		defer injected.Done()
		h.inject(rand.New(rand.NewPCG(seed, 0)), *duration, workloadDone)
	}()
	var wg sync.WaitGroup
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.client(i, end)
		}()
	}
	wg.Wait()
	close(workloadDone)
	injected.Wait()
	settled := h.settle(clients)
	ops := h.operations(settled)

	res := result{fired: h.fired.Load(), ops: len(ops)}
	for _, c := range h.clears {
		if c.outcome == outcomeUnknown {
			res.unknownClears++
		}
	}
	model := Model()
	switch porcupine.CheckOperationsTimeout(model, ops, *checkTimeout) {
	case porcupine.Ok:
		res.ok = true
		return res
	case porcupine.Unknown:
		res.inconclusive = true
		t.Logf("%s #%d (seed %d): the check timed out after %v (inconclusive)", c, n, seed, *checkTimeout)
		return res
	}
	res.violation = true
	_, info := porcupine.CheckOperationsVerbose(model, ops, *checkTimeout)
	info.AddAnnotations(h.notes)
	name := fmt.Sprintf("%s-%s-%d.html", strings.ReplaceAll(e.name, "/", "-"), c.fault, n)
	res.path = filepath.Join(outDir, name)
	if err := porcupine.VisualizePath(model, info, res.path); err != nil {
		t.Errorf("write the visualization: %v", err)
	}
	if err := os.WriteFile(strings.TrimSuffix(res.path, ".html")+".txt", []byte(h.explain(model, ops)), 0o644); err != nil {
		t.Errorf("write the listing: %v", err)
	}
	return res
}

// explain lists, for each key whose history alone is not linearizable, its
// operations in call order (times in ms from the start of the history) with the
// annotations of that key: the text beside the visualization.
func (h *history) explain(model porcupine.Model, ops []porcupine.Operation) string {
	var b strings.Builder
	fmt.Fprintf(&b, "case %s, history %d, seed %d\n", h.c, h.n, h.seed)
	for _, k := range h.keys {
		var mine []porcupine.Operation
		for _, op := range ops {
			if op.Input.(Input).Key == k.i {
				mine = append(mine, op)
			}
		}
		if porcupine.CheckOperationsTimeout(model, mine, *checkTimeout) != porcupine.Illegal {
			continue
		}
		fmt.Fprintf(&b, "\nkey k%d = %s in %s is not linearizable", k.i, k.digest, k.repo)
		// Where the search got stuck: the first operation (by return) that no longest
		// partial linearization could place.
		stuck := int64(-1)
		if _, info := porcupine.CheckOperationsVerbose(model, mine, *checkTimeout); len(info.PartialLinearizationsOperations()) > 0 {
			var longest []porcupine.Operation
			for _, l := range info.PartialLinearizationsOperations()[0] {
				if len(l) > len(longest) {
					longest = l
				}
			}
			placed := map[porcupine.Operation]bool{}
			for _, op := range longest {
				placed[op] = true
			}
			for _, op := range mine {
				if !placed[op] && (stuck < 0 || op.Return < stuck) {
					stuck = op.Return
				}
			}
		}
		if stuck >= 0 {
			fmt.Fprintf(&b, ": no order explains the operations returning by %.3f ms (marked >>)", float64(stuck)/1e6)
		}
		b.WriteString("\n")
		type line struct {
			at   int64
			text string
		}
		var lines []line
		ms := func(ns int64) string { return fmt.Sprintf("%9.3f", float64(ns)/1e6) }
		for _, op := range mine {
			var out Output
			if op.Output != nil {
				out = op.Output.(Output)
			}
			lines = append(lines, line{op.Call, fmt.Sprintf("%s %s  c%d  %s  (%v)", ms(op.Call), ms(op.Return), op.ClientId, Describe(op.Input.(Input), out), op.Metadata)})
		}
		prefix := fmt.Sprintf("k%d ", k.i)
		for _, a := range h.notes {
			if a.Tag != "" || strings.HasPrefix(a.Description, prefix) {
				lines = append(lines, line{a.Start, fmt.Sprintf("%s %s  c%d  [%s] %s", ms(a.Start), ms(a.End), a.ClientId, a.Tag, a.Description)})
			}
		}
		sort.Slice(lines, func(i, j int) bool { return lines[i].at < lines[j].at })
		for _, l := range lines {
			mark := "   "
			if stuck >= 0 && l.at <= stuck && l.at >= stuck-int64(30*time.Millisecond) {
				mark = ">> "
			}
			b.WriteString(mark + l.text + "\n")
		}
	}
	return b.String()
}
