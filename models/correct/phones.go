package correct

import "strings"

// The phone set, CMUdict's without stress.
var phoneNames = strings.Fields("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW " +
	"B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH")

const nVowels = 15 // the first 15 phones are vowels

var phoneID = map[string]uint8{}

// Costs are integers: unit is one unrelated phone swapped, inserted or
// dropped.
const unit = 20

var (
	subCost   [64][64]int32
	indelCost [64]int32
	minIndel  int32 = unit
)

// Bag groups: phones that swap cheaply (a voiced/unvoiced pair, the
// nasals, the vowels) share a group. A difference in group counts bounds
// the distance from below (bagBound): each group has a weight no larger
// than the cost of inserting or deleting any of its phones, and any swap
// across two groups costs at least the sum of their weights (checked in
// init).
const nGroups = 16

type bag [nGroups]uint8

var (
	bagGroup  [64]uint8
	bagWeight [nGroups]int32
)

func init() {
	for i, p := range phoneNames {
		phoneID[p] = uint8(i)
	}
	id := func(p string) uint8 {
		i, ok := phoneID[p]
		if !ok {
			panic("correct: phone " + p)
		}
		return i
	}
	for i := range phoneNames {
		for j := range phoneNames {
			switch {
			case i == j:
				subCost[i][j] = 0
			case i < nVowels && j < nVowels:
				subCost[i][j] = 9 // two vowels
			default:
				subCost[i][j] = unit
			}
		}
		if i < nVowels {
			indelCost[i] = 12
		} else {
			indelCost[i] = unit
		}
	}
	set := func(cost int32, pairs string) {
		for pr := range strings.SplitSeq(pairs, ",") {
			ab := strings.Fields(pr)
			a, b := id(ab[0]), id(ab[1])
			subCost[a][b], subCost[b][a] = cost, cost
		}
	}
	// Vowels that an engine's spelling or an accent blurs into each other.
	set(5, "AH IH,AH ER,AH AA,AH AO,AH UH,AH EH,AH AE,AA AO,IH IY,IH EH,EH AE,EY EH,UW UH,OW AO,AA AE,ER UH,IY EY,AY AA,AW AO,OW UW")
	// Voiced and unvoiced pairs; nasals.
	set(6, "P B,T D,K G,F V,TH DH,S Z,SH ZH,CH JH,M N,N NG,M NG")
	// Near consonants.
	set(12, "S SH,Z ZH,T TH,D DH,F TH,V DH,CH SH,JH ZH,CH T,JH D,L R,P F,B V,K CH,G JH,S TH,Z DH")
	// Schwa-like vowels and h come and go most easily.
	for _, p := range []string{"AH", "IH", "ER"} {
		indelCost[id(p)] = 10
	}
	indelCost[id("HH")] = 10
	for _, c := range indelCost[:len(phoneNames)] {
		minIndel = min(minIndel, c)
	}
	groups := []struct {
		w      int32
		phones string
	}{
		{10, "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW"}, {10, "M N NG"}, {10, "W"}, {10, "Y"}, {10, "HH"},
		{6, "L"}, {6, "R"}, {6, "P B"}, {6, "T D"}, {6, "K G"}, {6, "F V"}, {6, "TH DH"}, {6, "S Z"},
		{6, "SH ZH"}, {6, "CH JH"},
	}
	seen := 0
	for g, gr := range groups {
		bagWeight[g] = gr.w
		for _, p := range strings.Fields(gr.phones) {
			bagGroup[id(p)] = uint8(g)
			seen++
		}
	}
	if seen != len(phoneNames) || len(groups) > nGroups {
		panic("correct: bag groups")
	}
	for i := range phoneNames {
		gi := bagGroup[i]
		if indelCost[i] < bagWeight[gi] {
			panic("correct: bag weight above indel cost: " + phoneNames[i])
		}
		for j := range phoneNames {
			if gj := bagGroup[j]; gi != gj && subCost[i][j] < bagWeight[gi]+bagWeight[gj] {
				panic("correct: cheap swap across bag groups: " + phoneNames[i] + " " + phoneNames[j])
			}
		}
	}
}

// encode maps phones to ids, dropping any it does not know.
func encode(ph []string) []uint8 {
	out := make([]uint8, 0, len(ph))
	for _, p := range ph {
		if id, ok := phoneID[strings.TrimRight(p, "012")]; ok {
			out = append(out, id)
		}
	}
	return out
}

func bagOf(ph []uint8) bag {
	var b bag
	for _, p := range ph {
		if g := bagGroup[p]; b[g] < 255 {
			b[g]++
		}
	}
	return b
}

// bagBound is a lower bound on the distance between two phone strings with
// these bags: an insertion or deletion changes one group's count by one
// and costs at least its weight; a swap within a group changes nothing; a
// swap across groups changes two counts by one and costs at least both
// weights.
// It stops counting once over max.
func bagBound(a, b *bag, max int32) int32 {
	var d int32
	for i := range nGroups {
		x := int32(a[i]) - int32(b[i])
		if x < 0 {
			x = -x
		}
		if d += x * bagWeight[i]; d > max {
			break
		}
	}
	return d
}

func abs32(x int32) int32 {
	if x < 0 {
		return -x
	}
	return x
}

// dpRows is reusable scratch for distance.
type dpRows struct{ prev, cur []int32 }

// distance is the weighted edit distance between a and b, or false once it
// is certain to exceed max.
func (r *dpRows) distance(a, b []uint8, max int32) (int32, bool) {
	if cap(r.prev) < len(b)+1 {
		r.prev = make([]int32, len(b)+1)
		r.cur = make([]int32, len(b)+1)
	}
	prev, cur := r.prev[:len(b)+1], r.cur[:len(b)+1]
	prev[0] = 0
	for j, p := range b {
		prev[j+1] = prev[j] + indelCost[p]
	}
	rest := int32(len(a)) // phones of a still to come, after this row
	for _, pa := range a {
		rest--
		ia := indelCost[pa]
		sub := &subCost[pa]
		cur[0] = prev[0] + ia
		// Every cell costs at least its value plus the length difference
		// of what is left of a and b, in insertions or deletions.
		best := cur[0] + minIndel*abs32(rest-int32(len(b)))
		for j, pb := range b {
			v := prev[j] + sub[pb]
			if w := prev[j+1] + ia; w < v {
				v = w
			}
			if w := cur[j] + indelCost[pb]; w < v {
				v = w
			}
			cur[j+1] = v
			if h := v + minIndel*abs32(rest-int32(len(b)-j-1)); h < best {
				best = h
			}
		}
		if best > max {
			return 0, false
		}
		prev, cur = cur, prev
	}
	d := prev[len(b)]
	return d, d <= max
}
