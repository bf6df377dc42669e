# study_loss.gp - per variant: training loss (EMA-smoothed) over the whole run and over its
# second half (zoomed), and the mean held-out loss at each evaluation.
load here.'/study_common.gp'
set output dir.'/loss.png'
set multiplot layout 1,3 title sprintf("Study %s: loss curves (budget %s)", study, budget) font ",14"
set xlabel xlabel
set format x "%.0s%c"
set ylabel "training loss (nats, EMA 0.95)"
set title "training loss"
plot for [i=1:nvar] dir.'/plot/curves.dat' index (i-1) using xcol:5 with lines lw 2 lc rgb col(i) title word(names, i)
stats dir.'/plot/curves.dat' using xcol nooutput
set xrange [STATS_max / 2 : STATS_max]
set title "training loss, second half (zoom)"
plot for [i=1:nvar] dir.'/plot/curves.dat' index (i-1) using xcol:5 with lines lw 2 lc rgb col(i) title word(names, i)
# one evaluation per variant (eval_every = 0): a range around it instead of an empty one
stats dir.'/plot/val.dat' using xcol nooutput
if (STATS_min == STATS_max) { set xrange [0 : 2 * STATS_max + 1] } else { set autoscale x }
set title "held-out loss (mean over domains)"
set ylabel "validation loss (nats)"
plot for [i=1:nvar] dir.'/plot/val.dat' index (i-1) using xcol:4 with linespoints lw 2 pt 7 ps 0.8 lc rgb col(i) title word(names, i)
unset multiplot
