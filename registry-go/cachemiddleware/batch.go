package cachemiddleware

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/descriptor-service/descriptor-service/client-go/descriptor"
	"github.com/distribution/distribution/v3"
	"github.com/opencontainers/go-digest"
	"github.com/sirupsen/logrus"
	"go.opentelemetry.io/otel/trace"
)

// Stat batching (option batchstat, on by default).
//
// Each registry HEAD is one Stat, and a Stat is one RPC whose fixed cost on the
// service dwarfs the lookup itself. When Stats for one repository arrive while
// earlier ones are still in flight, the batcher sends the waiting ones together as
// one BatchStat ("natural batching"): at most maxInFlight RPCs per repository are
// in flight, and a Stat that arrives when fewer are goes out at once, so a lone
// HEAD waits for nothing. Each digest of a BatchStat is still its own lookup on the
// service (its own request, hit or miss in GetMetrics, its own backend read on a
// miss, its own error), so the semantics are those of one Stat per HEAD.
//
// Batch size: at most the option maxbatch digests go in one BatchStat (default
// defaultMaxBatch). A service whose grpc.maxbatch is lower answers BATCH_TOO_LARGE:
// the batcher then halves its limit (shared by every repository of the provider,
// kept for the life of the process), splits the batch and sends it again, so no
// HEAD sees the refusal. It logs once when it learns a lower limit; setting maxbatch
// to the service's grpc.maxbatch avoids the few refused calls at start.
//
// Trace context: an RPC carries the span of the first HEAD it answers (the only
// one for a lone HEAD), so the service's span joins that request's trace; W3C
// trace context names one parent per call.
const (
	maxInFlight     = 2
	defaultMaxBatch = 256 // well under the service's default grpc.maxbatch (1000)
)

type statCall struct {
	dgst digest.Digest
	span trace.SpanContext // the HEAD's span, for the RPC's trace context
	desc distribution.Descriptor
	err  error
	done chan struct{}
}

// statBatcher batches the Stats of one repository.
type statBatcher struct {
	repo   *descriptor.Repository
	single distribution.BlobDescriptorService // the scoped provider, for lone Stats
	limit  *batchLimit

	mu       sync.Mutex
	inFlight int
	queue    []*statCall
}

// batchers holds one statBatcher per (provider, repository); an idle one is
// dropped, so the map is bounded by the repositories being read at the moment.
type batchers struct {
	client *descriptor.Client
	limit  batchLimit
	mu     sync.Mutex
	byRepo map[string]*statBatcher
}

// newBatchers batches with at most maxBatch digests per BatchStat (0: the default).
func newBatchers(client *descriptor.Client, maxBatch int) *batchers {
	if maxBatch <= 0 {
		maxBatch = defaultMaxBatch
	}
	bs := &batchers{client: client, byRepo: map[string]*statBatcher{}}
	bs.limit.n.Store(int64(maxBatch))
	return bs
}

// batchLimit is the most digests one BatchStat carries, lowered when the service
// refuses a batch as too large.
type batchLimit struct {
	n      atomic.Int64
	warned atomic.Bool
}

func (l *batchLimit) get() int { return int(l.n.Load()) }

// refused lowers the limit below size, a batch the service refused as too large.
func (l *batchLimit) refused(size int) {
	next := int64(max(1, size/2))
	for {
		cur := l.n.Load()
		if cur <= next || l.n.CompareAndSwap(cur, next) {
			break
		}
	}
	if !l.warned.Swap(true) {
		logrus.WithFields(logrus.Fields{"middleware": Name, "refused": size}).Warn(
			"the descriptor service's grpc.maxbatch is lower than this plug-in's batch size: " +
				"splitting batches (set the middleware option maxbatch to the service's grpc.maxbatch)")
	}
}

func (bs *batchers) get(repo string, single distribution.BlobDescriptorService) *statBatcher {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b, ok := bs.byRepo[repo]
	if !ok {
		b = &statBatcher{repo: bs.client.Repository(repo), single: single, limit: &bs.limit}
		bs.byRepo[repo] = b
	}
	return b
}

func (bs *batchers) release(repo string, b *statBatcher) {
	bs.mu.Lock()
	defer bs.mu.Unlock()
	b.mu.Lock()
	idle := b.inFlight == 0 && len(b.queue) == 0
	b.mu.Unlock()
	if idle && bs.byRepo[repo] == b {
		delete(bs.byRepo, repo)
	}
}

// Stat queues dgst and waits for its answer (or for ctx).
func (b *statBatcher) Stat(ctx context.Context, owner *batchers, repoName string, dgst digest.Digest) (distribution.Descriptor, error) {
	call := &statCall{dgst: dgst, span: trace.SpanContextFromContext(ctx), done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, call)
	var batch []*statCall
	if b.inFlight < maxInFlight {
		batch = b.take()
	}
	b.mu.Unlock()
	if batch != nil {
		go b.send(owner, repoName, batch)
	}
	select {
	case <-call.done:
		return call.desc, call.err
	case <-ctx.Done():
		return distribution.Descriptor{}, ctx.Err()
	}
}

// take removes up to the batch limit of waiting calls and counts one more RPC in flight;
// b.mu must be held.
func (b *statBatcher) take() []*statCall {
	n := min(len(b.queue), b.limit.get())
	batch := b.queue[:n:n]
	b.queue = b.queue[n:]
	if len(b.queue) == 0 {
		b.queue = nil
	}
	b.inFlight++
	return batch
}

// batchStat answers digests with as many BatchStats as the service's limit needs:
// one result per digest, the call's error for each digest of a call that failed.
func (b *statBatcher) batchStat(ctx context.Context, digests []digest.Digest) []descriptor.BatchResult {
	out := make([]descriptor.BatchResult, 0, len(digests))
	for len(digests) > 0 {
		n := min(len(digests), b.limit.get())
		results, err := b.repo.BatchStat(ctx, digests[:n])
		if n > 1 && errors.Is(err, descriptor.ErrBatchTooLarge) {
			b.limit.refused(n)
			continue
		}
		if err == nil && len(results) != n {
			err = errors.New("descriptor service: BatchStat answered the wrong number of results")
		}
		if err != nil {
			for _, d := range digests[:n] {
				out = append(out, descriptor.BatchResult{Digest: d, Err: err})
			}
		} else {
			out = append(out, results...)
		}
		digests = digests[n:]
	}
	return out
}

// send answers one batch, then the calls that queued meanwhile.
func (b *statBatcher) send(owner *batchers, repoName string, batch []*statCall) {
	for batch != nil {
		// The calls' own contexts belong to different requests: the RPC runs under
		// the client's default deadline, and a caller that gives up stops waiting.
		// It carries the first call's span only (see the trace context note above).
		ctx := trace.ContextWithSpanContext(context.Background(), batch[0].span)
		if len(batch) == 1 {
			c := batch[0]
			c.desc, c.err = b.single.Stat(ctx, c.dgst)
			close(c.done)
		} else {
			digests := make([]digest.Digest, len(batch))
			for i, c := range batch {
				digests[i] = c.dgst
			}
			results := b.batchStat(ctx, digests)
			for i, c := range batch {
				switch {
				case results[i].Err != nil:
					c.err = descriptor.Standard(results[i].Err)
				default:
					c.desc = results[i].Descriptor
				}
				close(c.done)
			}
		}
		b.mu.Lock()
		b.inFlight--
		batch = nil
		if len(b.queue) > 0 {
			batch = b.take()
		}
		b.mu.Unlock()
	}
	owner.release(repoName, b)
}
