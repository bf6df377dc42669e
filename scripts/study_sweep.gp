# study_sweep.gp - the CCoE expert-size sweep: mean held-out loss against total parameters
# (each point labelled with l_i; l_i = 0 is the reference without experts) and the paper's
# performance gain -d(val loss)/|d(params)| per million parameters of each step of the sweep.
load here.'/study_common.gp'
set output dir.'/sweep.png'
f = dir.'/plot/sweep.dat'
set multiplot layout 1,2 title sprintf("Study %s: expert-size sweep (budget %s)", study, budget) font ",14"
set xlabel "total parameters"
set format x "%.1s%c"
set ylabel "validation loss (nats, mean over domains)"
set title "validation loss vs parameters"
unset key
set offsets graph 0.08, graph 0.08, graph 0.1, graph 0.1
plot f using 3:4 with linespoints lw 2 pt 7 ps 1.3 lc rgb col(1), \
     '' using 3:4:(sprintf("l_i=%d", $2)) with labels offset 0,1.2 font ",11"
set offsets 0, 0, 0, 0
set format x "%g"
set style fill solid 0.85 border -1
set boxwidth 0.6
stats f using 2 nooutput
set xrange [0.4 : STATS_max + 0.6]
set xtics 1
set xzeroaxis lt -1
set offsets 0, 0, graph 0.12, graph 0.05
set xlabel "expert layers l_i (gain of the step from l_i - 1)"
set ylabel "performance gain per 1M parameters"
set title "-d(val loss) / |d(params)|"
plot f using 2:($2 > 0 ? $5 : 1/0) with boxes lc rgb col(3), \
     '' using 2:($2 > 0 ? $5 : 1/0):(sprintf("%.4f", $5)) with labels offset 0,0.8 font ",11"
unset multiplot
