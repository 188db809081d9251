// Package lincheck checks the descriptor service's "Clear is final" guarantee with
// Porcupine (github.com/anishathalye/porcupine), a linearizability checker, over
// random concurrent histories recorded against real servers (docs/lincheck.md).
//
// The guarantee, per key (a digest in a repository): once Clear has returned OK, no
// Stat that starts afterwards, on any process sharing the cache, answers the blob,
// until the blob is pushed again (its link written to storage and then set through
// SetDescriptor). A Stat answers only what storage held at some point of the call,
// or what storage held before a Clear that has not returned yet.
//
// Model is that guarantee as a sequential specification. Its state per key:
//
//   - Stored: the repository's link to the blob is in storage (the ground truth);
//   - Holders: the Clears that deleted the link (it was stored) and are not final
//     yet (they have not returned, or, when their outcome is unknown, the test has
//     not yet let every process settle). While one is pending, the service may
//     still answer what storage held before it: its second invalidation has not
//     run.
//   - Primed: a SetDescriptor the service had no fence for wrote the blob (below).
//
// The blob is Answerable when it is Stored, some Clear holds it, or it is Primed.
//
// One Clear's return ends only its own hold: with two Clears overlapping, a push
// landing between them and the second Clear deleting it, the first Clear's return
// does not forbid an answer the second one still allows (it has not returned).
//
// Operations (Input.Kind):
//
//   - Push: a push's linearization point, the write of the link to storage:
//     Stored becomes true. The push's SetDescriptor that follows is no operation
//     of the model: a SetDescriptor never makes the service answer a blob storage
//     does not hold (one that started before a Clear returned and lands after it
//     is checked against storage, or dropped).
//   - ClearDelete: a Clear's effect on storage, somewhere inside the call: a
//     stored link is removed and the Clear holds the blob until it is final. With
//     Maybe (the Clear failed, its outcome is unknown) it may also have changed
//     nothing.
//   - ClearFinal: the point from which a Clear is final, at its return (an OK
//     Clear) or when the history settled (an unknown outcome whose process lived
//     on): its hold ends. A Clear whose process was killed has none: nothing is
//     left to vouch for it, and its hold never ends.
//   - ClearNotFound: a Clear answered BLOB_UNKNOWN: nothing changes.
//   - Prime: a push's SetDescriptor sent to a process that lost the cache's state
//     (an in-memory cache SIGKILLed and restarted) after the push wrote its link:
//     the fences of the Clears before went with the process, and a SetDescriptor
//     that starts after a Clear returned may prime the blob whatever storage holds
//     (the guarantee allows it; while a fence stands the service checks it against
//     storage, which is what the other pushes' SetDescriptors exercise). Primed
//     becomes true; the next Clear's final ends it (its invalidation removes the
//     entry).
//   - Stat: answering the blob needs Answerable. Answering BLOB_UNKNOWN is always
//     allowed: the guarantee is about answering a cleared blob, and a Stat may join
//     a backend read that began before a push (a Stat that failed is left out of
//     the history).
//   - Read: a direct read of the link in storage returns Stored (storage itself is
//     linearizable: this checks the recording as much as the service).
package lincheck

import (
	"fmt"
	"hash/fnv"
	"slices"
	"strconv"
	"strings"

	"github.com/anishathalye/porcupine"
)

// Kind is the kind of a history operation.
type Kind int

// The operations of the model (see the package documentation).
const (
	Push Kind = iota
	ClearDelete
	ClearFinal
	ClearNotFound
	Stat
	Read
	Prime
)

// Input is an operation's input: the key it acts on, its kind, and for the two
// halves of a Clear the Clear's number (for the visualization).
type Input struct {
	Key   int
	Kind  Kind
	Clear int  // ClearDelete, ClearFinal, ClearNotFound: which Clear
	Maybe bool // ClearDelete of a Clear whose outcome is unknown
}

// Output is what a Stat or a Read found: whether the blob is present.
type Output struct{ Present bool }

// State is the model's state for one key (comparable, as Porcupine needs).
type State struct {
	Stored  bool   // the link is in storage
	Holders string // the pending Clears that deleted the link: their numbers, sorted, comma-separated
	Primed  bool   // an unfenced SetDescriptor wrote the blob, and no Clear has been final since
}

// Answerable says whether the service may answer the blob.
func (s State) Answerable() bool { return s.Stored || s.Holders != "" || s.Primed }

// holders returns the Clear numbers of s.Holders.
func (s State) holders() []int {
	if s.Holders == "" {
		return nil
	}
	var ns []int
	for _, f := range strings.Split(s.Holders, ",") {
		n, err := strconv.Atoi(f)
		if err != nil {
			panic(fmt.Sprintf("lincheck: bad holders %q", s.Holders))
		}
		ns = append(ns, n)
	}
	return ns
}

// withHolders returns s with the holders ns (any order, no duplicates kept).
func (s State) withHolders(ns []int) State {
	ns = slices.Compact(slices.Sorted(slices.Values(ns)))
	fs := make([]string, len(ns))
	for i, n := range ns {
		fs[i] = strconv.Itoa(n)
	}
	s.Holders = strings.Join(fs, ",")
	return s
}

// Step returns every state the operation can lead to from s (none: the operation
// cannot have happened in state s).
func Step(s State, in Input, out Output) []State {
	switch in.Kind {
	case Push:
		s.Stored = true
		return []State{s}
	case ClearDelete:
		if !s.Stored { // nothing to delete here (another Clear did, or none was pushed)
			return []State{s}
		}
		deleted := s.withHolders(append(s.holders(), in.Clear))
		deleted.Stored = false
		if in.Maybe {
			return []State{deleted, s}
		}
		return []State{deleted}
	case ClearFinal:
		s.Primed = false
		return []State{s.withHolders(slices.DeleteFunc(s.holders(), func(n int) bool { return n == in.Clear }))}
	case ClearNotFound:
		return []State{s}
	case Prime:
		s.Primed = true
		return []State{s}
	case Stat:
		if out.Present && !s.Answerable() {
			return nil
		}
		return []State{s}
	case Read:
		if out.Present == s.Stored {
			return []State{s}
		}
		return nil
	}
	panic(fmt.Sprintf("lincheck: unknown operation kind %d", in.Kind))
}

// Model is the specification Porcupine checks histories against, one partition
// per key.
func Model() porcupine.Model {
	nm := porcupine.NondeterministicModel{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byKey := map[int][]porcupine.Operation{}
			var keys []int
			for _, op := range history {
				k := op.Input.(Input).Key
				if _, ok := byKey[k]; !ok {
					keys = append(keys, k)
				}
				byKey[k] = append(byKey[k], op)
			}
			parts := make([][]porcupine.Operation, 0, len(keys))
			for _, k := range keys {
				parts = append(parts, byKey[k])
			}
			return parts
		},
		Init: func() []any { return []any{State{}} },
		Step: func(state, input, output any) []any {
			var out Output
			if output != nil {
				out = output.(Output)
			}
			next := Step(state.(State), input.(Input), out)
			states := make([]any, len(next))
			for i, s := range next {
				states[i] = s
			}
			return states
		},
		Hash: func(state any) uint64 {
			s := state.(State)
			h := fnv.New64a()
			_, _ = fmt.Fprintf(h, "%t/%s/%t", s.Stored, s.Holders, s.Primed)
			return h.Sum64()
		},
		DescribeOperation: func(input, output any) string {
			in := input.(Input)
			var out Output
			if output != nil {
				out = output.(Output)
			}
			return Describe(in, out)
		},
		DescribeState: func(state any) string {
			s := state.(State)
			return fmt.Sprintf("stored=%t answerable=%t held by clears [%s] primed=%t", s.Stored, s.Answerable(), s.Holders, s.Primed)
		},
		DescribeOperationMetadata: func(info any) string {
			if info == nil {
				return ""
			}
			return fmt.Sprint(info)
		},
	}
	return nm.ToModel()
}

// Describe is how the visualization shows an operation.
func Describe(in Input, out Output) string {
	present := func(p bool) string {
		if p {
			return "present"
		}
		return "absent"
	}
	switch in.Kind {
	case Push:
		return fmt.Sprintf("k%d push (link written)", in.Key)
	case ClearDelete:
		if in.Maybe {
			return fmt.Sprintf("k%d clear#%d may delete (outcome unknown)", in.Key, in.Clear)
		}
		return fmt.Sprintf("k%d clear#%d deletes", in.Key, in.Clear)
	case ClearFinal:
		return fmt.Sprintf("k%d clear#%d final", in.Key, in.Clear)
	case ClearNotFound:
		return fmt.Sprintf("k%d clear#%d -> BLOB_UNKNOWN", in.Key, in.Clear)
	case Stat:
		return fmt.Sprintf("k%d stat -> %s", in.Key, present(out.Present))
	case Read:
		return fmt.Sprintf("k%d storage read -> %s", in.Key, present(out.Present))
	case Prime:
		return fmt.Sprintf("k%d set, unfenced (its process restarted since the link)", in.Key)
	}
	return fmt.Sprintf("k%d op %d", in.Key, in.Kind)
}
