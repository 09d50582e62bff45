// A grid of coloured cells on one <canvas>: one element however many cells there are (issue 13: 100 models
// x 1,000 workers is 100,000 cells, which as DOM nodes would take seconds to lay out). It sizes the cells to
// the room it has, outlines the row under the pointer and reports the cell hovered and the row clicked;
// what a cell means is the caller's (coverage.js).

const MIN_W = 2; // px: narrower columns could not be told apart by the pointer; the map scrolls instead
const MAX_W = 16;
const MIN_H = 4;
const MAX_H = 16;
const TALL = 480; // px the rows share before they stop shrinking (more rows scroll)

const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));

export class HeatMap {
  // `highlight`: an element positioned over the hovered row (a sibling of the canvas in a relative box).
  constructor(canvas, highlight, { onHover, onLeave, onRowClick }) {
    Object.assign(this, { canvas, highlight, rows: 0, cols: 0, cw: MAX_W, ch: MAX_H });
    canvas.addEventListener("mousemove", (e) => {
      const cell = this.cellAt(e);
      if (!cell) { this.leave(onLeave); return; }
      this.outline(cell.row);
      onHover(cell.row, cell.col, e);
    });
    canvas.addEventListener("mouseleave", () => this.leave(onLeave));
    canvas.addEventListener("click", (e) => {
      const cell = this.cellAt(e);
      if (cell) onRowClick(cell.row);
    });
  }

  // `cells`: one palette index per cell, row by row; `room`: the width in px the columns may share.
  draw(rows, cols, cells, palette, room) {
    Object.assign(this, { rows, cols });
    this.cw = clamp(Math.floor(room / Math.max(1, cols)), MIN_W, MAX_W);
    this.ch = clamp(Math.floor(TALL / Math.max(1, rows)), MIN_H, MAX_H);
    const width = Math.max(1, cols * this.cw), height = Math.max(1, rows * this.ch);
    const dpr = window.devicePixelRatio || 1;
    const { canvas } = this;
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    const ctx = canvas.getContext("2d");
    ctx.scale(dpr, dpr);
    // One path per colour, filled once each: 100,000 fillRect calls with a style change between them cost more.
    const paths = palette.map(() => new Path2D());
    const gap = this.cw >= 6 && this.ch >= 6 ? 1 : 0; // a white seam while cells are big enough to spare it
    for (let r = 0; r < rows; r += 1) {
      for (let c = 0; c < cols; c += 1) paths[cells[r * cols + c]].rect(c * this.cw, r * this.ch, this.cw - gap, this.ch - gap);
    }
    palette.forEach((color, i) => { ctx.fillStyle = color; ctx.fill(paths[i]); });
    Object.assign(canvas.dataset, { rows, cols, cellWidth: this.cw, cellHeight: this.ch });
    this.highlight.hidden = true;
  }

  cellAt(e) {
    const col = Math.floor(e.offsetX / this.cw), row = Math.floor(e.offsetY / this.ch);
    return row >= 0 && row < this.rows && col >= 0 && col < this.cols ? { row, col } : null;
  }

  outline(row) {
    Object.assign(this.highlight.style, { top: `${this.canvas.offsetTop + row * this.ch}px`,
      left: `${this.canvas.offsetLeft}px`, width: `${this.cols * this.cw}px`, height: `${this.ch}px` });
    this.highlight.hidden = false;
  }

  leave(onLeave) {
    this.highlight.hidden = true;
    onLeave();
  }
}
