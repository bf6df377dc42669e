# study_loss.gp - per variant: training loss (EMA-smoothed) over the whole run and over its
# second half (zoomed), and the mean held-out loss at each evaluation.
load here.'/study_common.gp'
set output dir.'/loss.png'
set multiplot layout 1,3 title sprintf("Study %s: loss curves (budget %s)", study, budget) font ",14"
# x in units of 1, thousands, millions, ... so that the axis reaches at least 10 of them and
# plain %g labels never round two ticks to the same text (as "%.0s%c" did: 1.5k and 2k -> 2k)
stats dir.'/plot/curves.dat' using xcol nooutput
xmax = STATS_max
xs = 1
while (xs < 1e12 && xmax / (xs * 1000) >= 10) { xs = xs * 1000 }
xunit = xs == 1 ? "" : xs == 1e3 ? " (thousands)" : xs == 1e6 ? " (millions)" : xs == 1e9 ? " (billions)" : " (trillions)"
set xlabel xlabel.xunit
set format x "%g"
set ylabel "training loss (nats, EMA 0.95)"
set title "training loss"
plot for [i=1:nvar] dir.'/plot/curves.dat' index (i-1) using (column(xcol) / xs):5 with lines lw 2 lc rgb col(i) title word(names, i)
set xrange [xmax / 2 / xs : xmax / xs]
set title "training loss, second half (zoom)"
plot for [i=1:nvar] dir.'/plot/curves.dat' index (i-1) using (column(xcol) / xs):5 with lines lw 2 lc rgb col(i) title word(names, i)
# one evaluation per variant (eval_every = 0): a range around it instead of an empty one
stats dir.'/plot/val.dat' using xcol nooutput
if (STATS_min == STATS_max) { set xrange [0 : (2 * STATS_max + 1) / xs] } else { set autoscale x }
set title "held-out loss (mean over domains)"
set ylabel "validation loss (nats)"
plot for [i=1:nvar] dir.'/plot/val.dat' index (i-1) using (column(xcol) / xs):4 with linespoints lw 2 pt 7 ps 0.8 lc rgb col(i) title word(names, i)
unset multiplot
