// Package plot draws the line charts of BENCHMARKS.md
// (bench/cmd/benchreport). The product binary does not link it.
package plot

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"math"
	"os"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Series is one line of a chart.
type Series struct {
	Name string
	X, Y []float64
}

var palette = []color.RGBA{{0xc0, 0x20, 0x20, 0xff}, {0x20, 0x60, 0xc0, 0xff}, {0x20, 0x90, 0x30, 0xff}, {0x90, 0x50, 0xb0, 0xff}}

// PNG writes a line chart with a logarithmic x axis (the number of
// calls) to path.
func PNG(path, title, xlabel, ylabel string, series []Series) error {
	const W, H, left, right, top, bottom = 860, 520, 80, 30, 50, 60
	img := image.NewRGBA(image.Rect(0, 0, W, H))
	for i := range img.Pix {
		img.Pix[i] = 0xff
	}
	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range series {
		for i := range s.X {
			xmin, xmax, ymax = math.Min(xmin, s.X[i]), math.Max(xmax, s.X[i]), math.Max(ymax, s.Y[i])
		}
	}
	if math.IsInf(xmin, 0) || xmin <= 0 {
		return fmt.Errorf("plot %s: no data", path)
	}
	if xmax == xmin {
		xmax = xmin * 10
	}
	ymax = niceCeil(ymax * 1.1)
	px := func(x float64) int {
		return left + int(float64(W-left-right)*(math.Log10(x)-math.Log10(xmin))/(math.Log10(xmax)-math.Log10(xmin)))
	}
	py := func(y float64) int { return H - bottom - int(float64(H-top-bottom)*y/ymax) }
	grey, black := color.RGBA{0xdd, 0xdd, 0xdd, 0xff}, color.RGBA{0, 0, 0, 0xff}
	for i := 0; i <= 5; i++ { // horizontal grid and y ticks
		y := ymax * float64(i) / 5
		line(img, left, py(y), W-right, py(y), grey)
		text(img, 8, py(y)+4, trimFloat(y), black)
	}
	for _, s := range series[:1] { // x ticks at the measured points
		for _, x := range s.X {
			line(img, px(x), top, px(x), H-bottom, grey)
			text(img, px(x)-10, H-bottom+16, trimFloat(x), black)
		}
	}
	line(img, left, H-bottom, W-right, H-bottom, black)
	line(img, left, top, left, H-bottom, black)
	text(img, left, 24, title, black)
	text(img, W/2-40, H-16, xlabel, black)
	text(img, 8, top-14, ylabel, black)
	for i, s := range series {
		c := palette[i%len(palette)]
		for j := range s.X {
			x, y := px(s.X[j]), py(s.Y[j])
			if j > 0 {
				line(img, px(s.X[j-1]), py(s.Y[j-1]), x, y, c)
				line(img, px(s.X[j-1]), py(s.Y[j-1])+1, x, y+1, c)
			}
			for dx := -3; dx <= 3; dx++ {
				for dy := -3; dy <= 3; dy++ {
					img.Set(x+dx, y+dy, c)
				}
			}
		}
		ly := top + 10 + 16*i
		for dx := 0; dx < 18; dx++ {
			for dy := -2; dy <= 2; dy++ {
				img.Set(W-right-220+dx, ly-4+dy, c)
			}
		}
		text(img, W-right-196, ly, s.Name, black)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

func trimFloat(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2g", v)
}

func text(img *image.RGBA, x, y int, s string, c color.Color) {
	d := font.Drawer{Dst: img, Src: image.NewUniform(c), Face: basicfont.Face7x13, Dot: fixed.P(x, y)}
	d.DrawString(s)
}

// line draws with Bresenham's algorithm.
func line(img *image.RGBA, x0, y0, x1, y1 int, c color.Color) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := 1, 1
	if x0 > x1 {
		sx = -1
	}
	if y0 > y1 {
		sy = -1
	}
	e := dx + dy
	for {
		img.Set(x0, y0, c)
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}
