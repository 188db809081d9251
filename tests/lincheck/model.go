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
// Model is that guarantee as a sequential specification. Its state per key is two
// bits:
//
//   - Stored: the repository's link to the blob is in storage (the ground truth);
//   - Answerable: the service may answer the blob. It is true whenever Stored is,
//     and stays true after a Clear has deleted the link only until that Clear is
//     final (it has returned, or, when its outcome is unknown, the test has let
//     every process settle).
//
// Operations (Input.Kind):
//
//   - Push: a push's linearization point, the write of the link to storage:
//     Stored and Answerable become true. The push's SetDescriptor that follows is
//     no operation of the model: a SetDescriptor never makes the service answer a
//     blob storage does not hold (one that started before a Clear returned and
//     lands after it is checked against storage, or dropped).
//   - ClearDelete: a Clear's effect on storage, somewhere inside the call: Stored
//     becomes false. With Maybe (the Clear failed, its outcome is unknown) it may
//     also have changed nothing.
//   - ClearFinal: the point from which a Clear is final, at its return (an OK
//     Clear) or when the history settled (an unknown outcome whose process lived
//     on): Answerable becomes Stored. A Clear whose process was killed has none:
//     nothing is left to vouch for it.
//   - ClearNotFound: a Clear answered BLOB_UNKNOWN: nothing changes.
//   - Stat: answering the blob needs Answerable. Answering BLOB_UNKNOWN is always
//     allowed: the guarantee is about answering a cleared blob, and a Stat may join
//     a backend read that began before a push (a Stat that failed is left out of
//     the history).
//   - Read: a direct read of the link in storage returns Stored (storage itself is
//     linearizable: this checks the recording as much as the service).
package lincheck

import (
	"fmt"

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

// State is the model's state for one key.
type State struct {
	Stored     bool // the link is in storage
	Answerable bool // the service may answer the blob
}

// Step returns every state the operation can lead to from s (none: the operation
// cannot have happened in state s).
func Step(s State, in Input, out Output) []State {
	switch in.Kind {
	case Push:
		return []State{{Stored: true, Answerable: true}}
	case ClearDelete:
		deleted := State{Stored: false, Answerable: s.Answerable}
		if in.Maybe && deleted != s {
			return []State{deleted, s}
		}
		return []State{deleted}
	case ClearFinal:
		return []State{{Stored: s.Stored, Answerable: s.Stored}}
	case ClearNotFound:
		return []State{s}
	case Stat:
		if out.Present && !s.Answerable {
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
			var h uint64 = 1
			if s.Stored {
				h |= 2
			}
			if s.Answerable {
				h |= 4
			}
			return h
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
			return fmt.Sprintf("stored=%t answerable=%t", s.Stored, s.Answerable)
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
	}
	return fmt.Sprintf("k%d op %d", in.Key, in.Kind)
}
