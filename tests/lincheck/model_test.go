package lincheck

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

// op is a history operation on key 0 by client c over [call, ret].
func op(c int, call, ret int64, in Input, out Output) porcupine.Operation {
	return porcupine.Operation{ClientId: c, Input: in, Call: call, Output: out, Return: ret}
}

// clearOK is an OK Clear over [call, ret], as the harness records it.
func clearOK(c int, call, ret int64, n int) []porcupine.Operation {
	return []porcupine.Operation{
		op(c, call, ret-1, Input{Kind: ClearDelete, Clear: n}, Output{}),
		op(c, ret, ret, Input{Kind: ClearFinal, Clear: n}, Output{}),
	}
}

func ops(parts ...any) []porcupine.Operation {
	var h []porcupine.Operation
	for _, p := range parts {
		switch p := p.(type) {
		case porcupine.Operation:
			h = append(h, p)
		case []porcupine.Operation:
			h = append(h, p...)
		}
	}
	return h
}

var (
	present = Output{Present: true}
	absent  = Output{}
)

// The model accepts what the guarantee allows and refuses what it forbids: each case
// is a history the checker must judge so.
func TestModel(t *testing.T) {
	cases := []struct {
		name string
		ops  []porcupine.Operation
		ok   bool
	}{
		{"a stat after a push answers the blob", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			op(1, 20, 30, Input{Kind: Stat}, present),
		), true},
		{"a stat may answer BLOB_UNKNOWN after a push (it joined a read begun before)", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			op(1, 20, 30, Input{Kind: Stat}, absent),
		), true},
		{"a stat must not answer a blob never pushed", ops(
			op(1, 20, 30, Input{Kind: Stat}, present),
		), false},
		{"a stat that starts after an OK clear returned must not answer the blob", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 40, 1),
			op(2, 50, 60, Input{Kind: Stat}, present),
		), false},
		{"a push whose link was written before the clear does not revive it", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 40, 1),
			// (the push's SetDescriptor lands here: no operation of the model)
			op(2, 50, 60, Input{Kind: Stat}, present),
		), false},
		{"a push after the clear's delete makes the blob answerable again", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 40, 1),
			op(0, 45, 48, Input{Kind: Push}, Output{}),
			op(2, 50, 60, Input{Kind: Stat}, present),
		), true},
		{"a push concurrent with the clear may land after its delete", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 40, 1),
			op(0, 25, 45, Input{Kind: Push}, Output{}),
			op(2, 50, 60, Input{Kind: Stat}, present),
		), true},
		{"while the clear runs a stat may still answer after storage lost the link (a near cache)", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 100, 1),
			op(2, 30, 40, Input{Kind: Read}, absent),
			op(3, 50, 60, Input{Kind: Stat}, present),
		), true},
		{"a stat that began before the clear returned may answer the blob", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 40, 1),
			op(3, 35, 60, Input{Kind: Stat}, present),
		), true},
		{"a storage read after the clear returned sees no link", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 40, 1),
			op(2, 50, 60, Input{Kind: Read}, present),
		), false},
		{"a clear answering BLOB_UNKNOWN changes nothing", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			op(1, 20, 40, Input{Kind: ClearNotFound, Clear: 1}, Output{}),
			op(2, 50, 60, Input{Kind: Read}, absent),
		), false},
		{"an unknown-outcome clear may have done nothing", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			op(1, 20, 99, Input{Kind: ClearDelete, Clear: 1, Maybe: true}, Output{}),
			op(1, 100, 100, Input{Kind: ClearFinal, Clear: 1}, Output{}),
			op(2, 110, 120, Input{Kind: Read}, present),
			op(2, 130, 140, Input{Kind: Stat}, present),
		), true},
		{"an unknown-outcome clear that deleted is final once the history settled", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			op(1, 20, 99, Input{Kind: ClearDelete, Clear: 1, Maybe: true}, Output{}),
			op(1, 100, 100, Input{Kind: ClearFinal, Clear: 1}, Output{}),
			op(2, 110, 120, Input{Kind: Read}, absent),
			op(2, 130, 140, Input{Kind: Stat}, present),
		), false},
		{"one clear's return does not end another's hold (a push between two clears, deleted by the second)", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 100, 1),
			clearOK(2, 30, 200, 2),
			op(3, 40, 45, Input{Kind: Push}, Output{}),
			op(4, 60, 65, Input{Kind: Read}, absent),
			op(5, 101, 110, Input{Kind: Stat}, present),
		), true},
		{"... but once every clear that deleted it has returned, the blob is not answered", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 100, 1),
			clearOK(2, 30, 90, 2),
			op(3, 40, 45, Input{Kind: Push}, Output{}),
			op(4, 60, 65, Input{Kind: Read}, absent),
			op(5, 101, 110, Input{Kind: Stat}, present),
		), false},
		{"a clear that found nothing to delete holds nothing", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 50, 1),
			op(4, 60, 65, Input{Kind: Read}, absent),
			clearOK(2, 55, 200, 2),
			op(5, 101, 110, Input{Kind: Stat}, present),
		), false},
		{"a set the restarted process had no fence for may prime the blob", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 40, 1),
			op(0, 50, 60, Input{Kind: Prime}, Output{}),
			op(2, 70, 80, Input{Kind: Read}, absent),
			op(3, 90, 100, Input{Kind: Stat}, present),
		), true},
		{"... until a clear of it returns", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			clearOK(1, 20, 40, 1),
			op(0, 50, 60, Input{Kind: Prime}, Output{}),
			op(2, 70, 80, Input{Kind: ClearNotFound, Clear: 2}, Output{}),
			clearOK(1, 90, 100, 3),
			op(3, 110, 120, Input{Kind: Stat}, present),
		), false},
		{"a clear whose process was killed promises nothing after its delete", ops(
			op(0, 0, 10, Input{Kind: Push}, Output{}),
			op(1, 20, 99, Input{Kind: ClearDelete, Clear: 1, Maybe: true}, Output{}),
			op(2, 110, 120, Input{Kind: Read}, absent),
			op(2, 130, 140, Input{Kind: Stat}, present),
		), true},
	}
	model := Model()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := porcupine.CheckOperations(model, c.ops)
			if got != c.ok {
				t.Fatalf("linearizable = %t, want %t", got, c.ok)
			}
		})
	}
}
