/* Training the category classifier: minibatch AdamW on cross-entropy, early stopping
 * on a dev split, deterministic for a given seed (one thread, seeded shuffles). */
#ifndef COE_TRAIN_H
#define COE_TRAIN_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "router/classifier.h"
#include "router/dataset.h"

typedef struct coe_train_params {
    coe_features_params features;
    int dim;             /* embedding width */
    int hidden;          /* 0: no hidden layer */
    int max_epochs;
    int patience;        /* epochs without a better dev accuracy before stopping */
    int batch;
    float lr;            /* peak learning rate; decays linearly to 0 over schedule_epochs */
    int schedule_epochs; /* the decay's horizon; 0: max_epochs */
    float weight_decay;  /* AdamW's decoupled decay */
    float beta1, beta2, eps;
    float feature_dropout;  /* share of a row's features dropped at random in training */
    uint64_t seed;
} coe_train_params;

coe_train_params coe_train_defaults(void);

/* Per-epoch report for a progress display. */
typedef struct coe_train_progress {
    int epoch, max_epochs;
    double loss;         /* mean training cross-entropy of the epoch */
    double dev_accuracy;
    double best_dev_accuracy;
    int best_epoch;
    double seconds;      /* since training started */
} coe_train_progress;

typedef void (*coe_train_report_fn)(void *ctx, const coe_train_progress *p);

/* Trains on train, stopping early on dev (both borrowed); the model with the best
 * dev accuracy is returned, and its epoch in *best_epoch (may be NULL). With an
 * empty dev, every one of max_epochs runs and the last model is returned. data_hash
 * goes into the model's metadata. */
int coe_router_train(const coe_dataset *train, const coe_dataset *dev, const coe_train_params *p,
                     uint64_t data_hash, coe_train_report_fn report, void *ctx, coe_router **out,
                     int *best_epoch);

#endif
