package lincheck

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

var (
	numHistories  = flag.Int("histories", 18, "histories in all, spread evenly over the cases")
	duration      = flag.Duration("duration", 2*time.Second, "workload time of one history")
	numClients    = flag.Int("clients", 6, "concurrent workload clients")
	seedFlag      = flag.Uint64("seed", 0, "seed of the first history (0: from the clock)")
	casesFlag     = flag.String("cases", "", "comma-separated cases to run (cache/fault, e.g. redis/kill,inmemory/none); empty: all")
	outFlag       = flag.String("out", "", "directory for the visualizations of violating histories (default: a new temporary directory)")
	clientTimeout = flag.Duration("client-timeout", time.Second, "deadline of every call")
	settleTimeout = flag.Duration("settle", 5*time.Second, "how long a history with failed calls may take to settle")
	withSet       = flag.Bool("set", true, "pushes call SetDescriptor after writing the link (false: storage only, which leaves the read and Clear paths alone under test)")
	checkTimeout  = flag.Duration("check-timeout", 20*time.Second, "how long Porcupine may search one history")
)

type tally struct {
	histories, violations, inconclusive, fired, ops, unknownClears int
}

// TestLinearizable records random concurrent histories of pushes, Clears, Stats and
// storage reads against real servers, with faults, and checks each with Porcupine
// against Model (docs/lincheck.md). A violating history is written as Porcupine's
// visualization (HTML) and its path printed; the test then fails.
func TestLinearizable(t *testing.T) {
	cases := allCases
	if *casesFlag != "" {
		cases = nil
		for _, name := range strings.Split(*casesFlag, ",") {
			found := false
			for _, c := range append(append([]testCase(nil), allCases...), controlCases...) {
				if c.String() == strings.TrimSpace(name) {
					cases = append(cases, c)
					found = true
				}
			}
			if !found {
				t.Fatalf("-cases: unknown case %q (known: %v, controls %v)", name, allCases, controlCases)
			}
		}
	}
	if *numHistories < len(cases) {
		cases = cases[:max(*numHistories, 1)]
	}
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	outDir := *outFlag
	if outDir == "" {
		var err error
		if outDir, err = os.MkdirTemp("", "lincheck-"); err != nil {
			t.Fatal(err)
		}
	} else if err := os.MkdirAll(outDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Logf("seed %d; %d histories over %d cases; visualizations of violations go to %s", seed, *numHistories, len(cases), outDir)

	// How many histories each case runs.
	count := map[testCase]int{}
	for i := 0; i < *numHistories; i++ {
		count[cases[i%len(cases)]]++
	}
	// One set of servers per configuration; its cases' histories interleave.
	var envs []envKind
	for _, c := range cases {
		seen := false
		for _, e := range envs {
			seen = seen || e == c.env
		}
		if !seen {
			envs = append(envs, c.env)
		}
	}
	tallies := map[testCase]*tally{}
	for _, c := range cases {
		tallies[c] = &tally{}
	}
	n := 0
	for _, ek := range envs {
		t.Run(ek.String(), func(t *testing.T) {
			e := startEnv(t, ek)
			var mine []testCase
			left := map[testCase]int{}
			for _, c := range cases {
				if c.env == ek {
					mine = append(mine, c)
					left[c] = count[c]
				}
			}
			for more := true; more; {
				more = false
				for _, c := range mine {
					if left[c] == 0 {
						continue
					}
					left[c]--
					more = true
					n++
					res := runHistory(t, e, c, n, seed+uint64(n), outDir)
					tl := tallies[c]
					tl.histories++
					tl.ops += res.ops
					tl.unknownClears += res.unknownClears
					if res.fired {
						tl.fired++
					}
					if res.inconclusive {
						tl.inconclusive++
					}
					if res.violation {
						tl.violations++
						t.Errorf("%s history %d (seed %d) is not linearizable: %s", c, n, seed+uint64(n), res.path)
					}
				}
			}
		})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-24s %9s %10s %12s %12s %8s %14s\n", "case", "histories", "violations", "inconclusive", "fault fired", "ops", "unknown clears")
	var total tally
	for _, c := range cases {
		tl := tallies[c]
		fmt.Fprintf(&b, "%-24s %9d %10d %12d %12d %8d %14d\n", c, tl.histories, tl.violations, tl.inconclusive, tl.fired, tl.ops, tl.unknownClears)
		total.histories += tl.histories
		total.violations += tl.violations
		total.inconclusive += tl.inconclusive
	}
	fmt.Fprintf(&b, "%-24s %9d %10d %12d\n", "total", total.histories, total.violations, total.inconclusive)
	t.Logf("results (seed %d):\n%s", seed, b.String())
}
