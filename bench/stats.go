package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// estimate is the geometric mean of paired ratios (a variant's measurement over the
// baseline's in the same round, block or repetition) with its 95% confidence interval: a
// t-interval over the log ratios, transformed back. Lo and Hi are NaN when fewer than two
// pairs were usable; GM is NaN when none was.
type estimate struct {
	GM, Lo, Hi float64
	N          int
}

// ratioEstimate pairs num[i] with den[i] and estimates their ratio. Pairs where either value
// is not positive (a failed segment, a missing measurement) are left out.
func ratioEstimate(num, den []float64) estimate {
	var logs []float64
	for i := range min(len(num), len(den)) {
		if num[i] > 0 && den[i] > 0 {
			logs = append(logs, math.Log(num[i]/den[i]))
		}
	}
	return logEstimate(logs)
}

// logEstimate estimates exp of the mean of logs with a 95% t-interval.
func logEstimate(logs []float64) estimate {
	e := estimate{GM: math.NaN(), Lo: math.NaN(), Hi: math.NaN(), N: len(logs)}
	if len(logs) == 0 {
		return e
	}
	var sum float64
	for _, l := range logs {
		sum += l
	}
	mean := sum / float64(len(logs))
	e.GM = math.Exp(mean)
	if len(logs) < 2 {
		return e
	}
	var ss float64
	for _, l := range logs {
		ss += (l - mean) * (l - mean)
	}
	half := t975(len(logs)-1) * math.Sqrt(ss/float64(len(logs)-1)/float64(len(logs)))
	e.Lo, e.Hi = math.Exp(mean-half), math.Exp(mean+half)
	return e
}

// ok reports whether e has an interval.
func (e estimate) ok() bool { return !math.IsNaN(e.Lo) }

// overlaps reports whether the intervals of e and o overlap. Without both intervals it
// reports true: nothing is shown to differ.
func (e estimate) overlaps(o estimate) bool {
	if !e.ok() || !o.ok() {
		return true
	}
	return e.Lo <= o.Hi && o.Lo <= e.Hi
}

// mark is "▼" or "▲" when e's interval lies wholly below or above the A/A control's aa (a
// difference beyond the run's noise), else "" (within noise, or not enough rounds to tell).
func (e estimate) mark(aa estimate) string {
	switch {
	case e.overlaps(aa):
		return ""
	case e.Hi < aa.Lo:
		return " ▼"
	default:
		return " ▲"
	}
}

// String formats e as "0.96 (0.94–0.98)", or "0.96" without an interval, or "–".
func (e estimate) String() string {
	switch {
	case math.IsNaN(e.GM):
		return "–"
	case !e.ok():
		return fmt.Sprintf("%.2f", e.GM)
	default:
		return fmt.Sprintf("%.2f (%.2f–%.2f)", e.GM, e.Lo, e.Hi)
	}
}

// short formats e's geometric mean alone, with its mark against aa.
func (e estimate) short(aa estimate) string {
	if math.IsNaN(e.GM) {
		return "–"
	}
	return fmt.Sprintf("%.2f%s", e.GM, e.mark(aa))
}

// t975 is the 0.975 quantile of Student's t distribution with df degrees of freedom.
func t975(df int) float64 {
	table := [...]float64{ // df 1 to 30
		12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
		2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
		2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
	}
	switch {
	case df < 1:
		return math.NaN()
	case df <= len(table):
		return table[df-1]
	case df <= 40:
		return 2.021
	case df <= 60:
		return 2.000
	case df <= 120:
		return 1.980
	default:
		return 1.960
	}
}

// meanCI is the arithmetic mean of xs with a 95% t-interval half-width (NaN for fewer than
// two values).
func meanCI(xs []float64) (mean, half float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN()
	}
	for _, x := range xs {
		mean += x
	}
	mean /= float64(len(xs))
	if len(xs) < 2 {
		return mean, math.NaN()
	}
	var ss float64
	for _, x := range xs {
		ss += (x - mean) * (x - mean)
	}
	return mean, t975(len(xs)-1) * math.Sqrt(ss/float64(len(xs)-1)/float64(len(xs)))
}

// shuffled returns a copy of vs in an order drawn from rng.
func shuffled(rng *rand.Rand, vs []variant) []variant {
	s := slices.Clone(vs)
	rng.Shuffle(len(s), func(i, j int) { s[i], s[j] = s[j], s[i] })
	return s
}
